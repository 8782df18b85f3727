-- hydrate.lua: restore an account missing from Redis from its PostgreSQL ledger.
-- Called by engine.ledger.credits.Credits._hydrate_many and engine.ledger.completeness.
--
-- KEYS[1] account hash
-- ARGV[1] balance from the ledger
-- ARGV[2] seq: the highest entry sequence number in the ledger (0 for none)
-- ARGV[3] updated_at, epoch milliseconds, or "" for an account with no entries yet
--
-- Returns 1 when it wrote the account, 0 when the account already existed (a concurrent request
-- hydrated or changed it first; its state wins).

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'balance', ARGV[1], 'seq', ARGV[2], 'updated_at', ARGV[3])
return 1

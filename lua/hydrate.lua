-- hydrate.lua: restore an account missing from Redis from its PostgreSQL ledger.
-- Called by engine.ledger.credits.Credits._hydrate_many and engine.ledger.completeness.
--
-- KEYS[1] account hash
-- KEYS[2] the shard's completing marker, when ARGV[4] is a pass's token (else no KEYS[2])
-- ARGV[1] balance from the ledger
-- ARGV[2] seq: the highest entry sequence number in the ledger (0 for none)
-- ARGV[3] updated_at, epoch milliseconds, or "" for an account with no entries yet
-- ARGV[4] absent, "", or the token of the completeness pass writing this (its snapshot of the ledger
--         is only good while its completing marker stands: Redis lost no data since)
--
-- Returns 1 when it wrote the account, 0 when the account already existed (a concurrent request
-- hydrated or changed it first; its state wins), -1 when the pass's marker is gone: nothing
-- written, the pass must stop.

if ARGV[4] and ARGV[4] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[4] then
  return -1
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'balance', ARGV[1], 'seq', ARGV[2], 'updated_at', ARGV[3])
return 1

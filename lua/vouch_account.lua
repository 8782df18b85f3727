-- vouch_account.lua: answer for an account missing from Redis without asking PostgreSQL, when
-- Redis holds every account of its shard (the shard's complete marker, set by the worker once
-- it has checked the shard against the ledger; gone with the data after a flush).
-- Called by engine.ledger.credits.Credits._hydrate_many before it asks PostgreSQL.
--
-- KEYS[1] account hash
-- KEYS[2] the complete marker of the account's shard
-- ARGV[1] "1": create the account (balance 0, seq 0) when Redis vouches it has no entries
--
-- Returns 1 when the account exists (now), 0 when Redis vouches it has no entries and it was not
-- created, -1 when Redis cannot vouch: ask PostgreSQL.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 1
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return -1
end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'balance', 0, 'seq', 0, 'updated_at', '')
  return 1
end
return 0

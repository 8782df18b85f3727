-- vouch_account.lua: answer for an account missing from Redis without asking PostgreSQL, when
-- Redis holds every account of its shard (the shard's complete marker, set by the worker once
-- it has checked the shard against the ledger; gone with the data after a flush) but for those
-- evicted, which left a tombstone (lua/evict_account.lua).
-- Called by engine.ledger.hydration.Hydration.ensure while PostgreSQL is unreachable.
--
-- KEYS[1] account hash
-- KEYS[2] the complete marker of the account's shard
-- KEYS[3] the account's tombstone set
-- ARGV[1] "1": create the account (balance 0, seq 0) when Redis vouches it has no entries
-- ARGV[2] the account's member in its tombstone set
--
-- Returns 1 when the account exists (now), 0 when Redis vouches it has no entries and it was not
-- created, -1 when Redis cannot vouch: ask PostgreSQL.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 1
end
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 1 then
  return -1
end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'balance', 0, 'seq', 0, 'updated_at', '')
  return 1
end
return 0

-- mark_complete.lua: mark a shard complete (every account with ledger entries is in Redis) once
-- the worker's pass over the ledger is done, unless Redis lost its data during the pass.
-- Called by engine.ledger.completeness.complete_shards.
--
-- KEYS[1] the shard's completing marker, set to the pass's token when the pass began
-- KEYS[2] the shard's complete marker
-- ARGV[1] the pass's token
--
-- Returns 1 when the shard is now complete, 0 when the completing marker is gone or another
-- pass's (Redis lost data meanwhile, or a newer pass runs): the shard stays unvouched.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], '1')
redis.call('DEL', KEYS[1])
return 1

-- claim_due.lua: lease the accounts of one shard whose auto top-up is due, so that however many
-- workers sweep, each due top-up is queued by one of them.
-- Called by engine.auto_top_up.AutoTopUps.claim_due (one call per shard, pipelined).
--
-- KEYS[1] the shard's top-up-due sorted set (member: account, score: when due, epoch ms)
-- ARGV[1] now, epoch milliseconds
-- ARGV[2] lease, milliseconds: a claimed account is due again then, unless its job reschedules
--         or removes it first (a worker that dies mid-job is covered)
-- ARGV[3] most members to claim
--
-- Returns the claimed members.

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], string.format('%d', until_ms), member)
end
return due

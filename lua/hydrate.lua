-- hydrate.lua: restore an account missing from Redis from its PostgreSQL ledger, with its
-- active grants and holds (lua/account.lua has their format).
-- Called by engine.ledger.hydration and engine.ledger.completeness.
--
-- KEYS[1] account hash
-- KEYS[2] grants hash
-- KEYS[3] holds hash
-- KEYS[4] the shard's expiry-due set
-- KEYS[5] the shard's completing marker, when ARGV[4] is a pass's token (else no KEYS[5])
-- ARGV[1] balance from the ledger
-- ARGV[2] seq: the highest entry sequence number in the ledger (0 for none)
-- ARGV[3] updated_at, epoch milliseconds, or "" for an account with no entries yet
-- ARGV[4] "", or the token of the completeness pass writing this (its snapshot of the ledger
--         is only good while its completing marker stands: Redis lost no data since)
-- ARGV[5] held, ARGV[6] granted, ARGV[7] reserved, ARGV[8] due (epoch ms, or "" when nothing
--         expires)
-- ARGV[9] how many grants follow; then grant_id, value pairs; then hold token, value pairs.
--         Grants and holds past their time are restored too: the next script touching the
--         account expires them, writing their entries once.
--
-- Returns 1 when it wrote the account, 0 when the account already existed (a concurrent request
-- hydrated or changed it first; its state wins), -1 when the pass's marker is gone: nothing
-- written, the pass must stop.

if ARGV[4] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[4] then
  return -1
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'balance', ARGV[1], 'seq', ARGV[2], 'updated_at', ARGV[3])
if ARGV[4] == '' and ARGV[2] ~= '0' then
  -- A request needed an account that has a ledger (evicted, or lost): that is a use, or the
  -- next eviction pass would take it again under the requests that follow (engine.ledger
  -- .eviction reads updated_at and this).
  local t = redis.call('TIME')
  local now = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
  redis.call('HSET', KEYS[1], 'hydrated_at', now)
end
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[1], 'held', ARGV[5], 'granted', ARGV[6], 'reserved', ARGV[7], 'due',
    ARGV[8])
  redis.call('ZADD', KEYS[4], ARGV[8], string.match(KEYS[1], ':acct:(.*)$'))
end
-- Whatever an earlier life of the account left behind is stale.
redis.call('DEL', KEYS[2], KEYS[3])
local grants = tonumber(ARGV[9])
local first_hold = 10 + 2 * grants
for i = 10, first_hold - 1, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
for i = first_hold, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
return 1

-- apply_entry.lua: post one ledger entry (add, deduct or refund) to an account, at most once per
-- idempotency key, and a refund at most once per refunded entry.
-- Called by engine.credits.Credits._apply_entry.
--
-- KEYS[1] account hash (balance, seq, updated_at)
-- KEYS[2] recent-entries list of the account
-- KEYS[3] outbox stream of the account's shard
-- KEYS[4] unpersisted-entries hash of the shard (ledger_id -> entry JSON)
-- KEYS[5] idempotency hash, when ARGV[9] is "1"
-- KEYS[5 or 6] refund marker of the refunded entry, when ARGV[10] is "1"
--
-- ARGV[1]  delta: signed integer, |delta| in 1..2^53-1
-- ARGV[2]  floor: lowest balance a negative delta may leave (0, or -overdraft limit)
-- ARGV[3]  ceiling: highest balance a positive delta may leave (2^53-1)
-- ARGV[4]  entry JSON without amount and closing brace; the script appends amount,
--          balance_after and seq
-- ARGV[5]  request fingerprint (compared on a repeated idempotency key)
-- ARGV[6]  idempotency TTL in seconds
-- ARGV[7]  length of the recent-entries list
-- ARGV[8]  now, epoch milliseconds (the account's updated_at)
-- ARGV[9]  "1" when KEYS holds an idempotency key
-- ARGV[10] "1" when KEYS holds a refund marker
-- ARGV[11] ledger_id of the entry
-- ARGV[12] "1" to take only what the floor allows when a negative delta would cross it
--
-- Returns one of:
--   {"ok", balance_before, entry_json}       applied
--   {"replay", balance_before, entry_json}   the stored first result of this idempotency key
--   {"conflict"}                             the key was used with a different request
--   {"refunded", ledger_id}                  the refunded entry already has this refund
--   {"missing"}                              no account in Redis: hydrate it, then call again
--   {"insufficient", balance}                below the floor (or at it, when clamping); nothing
--                                            written
--   {"overflow", balance}                    above the ceiling; nothing written
--
-- Every check comes before the first write: Redis never rolls a script back. Numbers are turned
-- into text with %d only, because Lua's tostring rounds past 14 digits.

local next_key = 5
local idem, marker
if ARGV[9] == '1' then
  idem = KEYS[next_key]
  next_key = next_key + 1
end
if ARGV[10] == '1' then
  marker = KEYS[next_key]
end

if idem then
  local stored = redis.call('HMGET', idem, 'fingerprint', 'balance_before', 'entry')
  if stored[1] then
    if stored[1] ~= ARGV[5] then
      return {'conflict'}
    end
    return {'replay', stored[2], stored[3]}
  end
end

if marker then
  local refund = redis.call('GET', marker)
  if refund then
    return {'refunded', refund}
  end
end

local raw = redis.call('HGET', KEYS[1], 'balance')
if not raw then
  return {'missing'}
end

local delta = tonumber(ARGV[1])
local floor = tonumber(ARGV[2])
local after = tonumber(raw) + delta
if delta < 0 and after < floor then
  if ARGV[12] ~= '1' or tonumber(raw) <= floor then
    return {'insufficient', raw}
  end
  delta = floor - tonumber(raw)
end
if delta > 0 and after > tonumber(ARGV[3]) then
  return {'overflow', raw}
end

delta = string.format('%d', delta)
after = redis.call('HINCRBY', KEYS[1], 'balance', delta)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[8])
local entry = ARGV[4] .. ',"amount":' .. delta .. ',"balance_after":' .. string.format('%d', after)
  .. ',"seq":' .. string.format('%d', seq) .. '}'
redis.call('XADD', KEYS[3], '*', 'e', entry)
redis.call('HSET', KEYS[4], ARGV[11], entry)
redis.call('LPUSH', KEYS[2], entry)
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[7]) - 1)
if idem then
  redis.call('HSET', idem, 'fingerprint', ARGV[5], 'balance_before', raw, 'entry', entry)
  redis.call('EXPIRE', idem, ARGV[6])
end
if marker then
  redis.call('SET', marker, ARGV[11])
end
return {'ok', raw, entry}

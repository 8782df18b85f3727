-- apply_entry.lua: post one ledger entry (add, deduct or refund) to an account, at most once per
-- idempotency key, and a refund at most once per refunded entry.
-- Called by engine.credits.Credits._apply (one entry) and Credits.batch (many, pipelined).
--
-- KEYS[1] account hash (balance, seq, updated_at)
-- KEYS[2] recent-entries list of the account
-- KEYS[3] outbox stream of the account's shard
-- KEYS[4] unpersisted-entries hash of the shard (ledger_id -> entry JSON)
-- KEYS[5] idempotency hash, when ARGV[9] has "i"
-- next:  refund marker of the refunded entry, when ARGV[9] has "r"
-- next two: the account's auto top-up hash (threshold, pending) and its shard's top-up-due sorted
--       set, when ARGV[9] has "t"
--
-- ARGV[1] delta: signed integer, |delta| in 1..2^53-1
-- ARGV[2] floor: lowest balance a negative delta may leave (0, or -overdraft limit)
-- ARGV[3] entry JSON without amount and closing brace; the script appends amount,
--         balance_after and seq
-- ARGV[4] request fingerprint (compared on a repeated idempotency key)
-- ARGV[5] idempotency TTL in seconds
-- ARGV[6] length of the recent-entries list
-- ARGV[7] now, epoch milliseconds (the account's updated_at)
-- ARGV[8] ledger_id of the entry
-- ARGV[9] mode, any of: "i" KEYS holds an idempotency key, "r" KEYS holds a refund marker,
--         "c" take only what the floor allows when a negative delta would cross it,
--         "t" start an auto top-up when the entry leaves the balance below the threshold
-- ARGV[10] the account's member in the top-up-due set, when ARGV[9] has "t"
--
-- A positive delta may not take the balance above 2^53-1 (exact in doubles and JavaScript).
--
-- Returns one of:
--   {"ok", balance_before, entry_json, top_up} applied; top_up is 1 when this entry started an
--                                            auto top-up (at most one is pending per account)
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

local CEILING = 9007199254740991
local mode = ARGV[9]
local next_key = 5
local idem, marker, top_up, top_up_due
if string.find(mode, 'i', 1, true) then
  idem = KEYS[next_key]
  next_key = next_key + 1
end
if string.find(mode, 'r', 1, true) then
  marker = KEYS[next_key]
  next_key = next_key + 1
end
if string.find(mode, 't', 1, true) then
  top_up = KEYS[next_key]
  top_up_due = KEYS[next_key + 1]
end

if idem then
  local stored = redis.call('HMGET', idem, 'fingerprint', 'balance_before', 'entry')
  if stored[1] then
    if stored[1] ~= ARGV[4] then
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
  if not string.find(mode, 'c', 1, true) or tonumber(raw) <= floor then
    return {'insufficient', raw}
  end
  delta = floor - tonumber(raw)
end
if delta > 0 and after > CEILING then
  return {'overflow', raw}
end

local threshold
if top_up and delta < 0 then
  threshold = redis.call('HGET', top_up, 'threshold')
end

delta = string.format('%d', delta)
after = redis.call('HINCRBY', KEYS[1], 'balance', delta)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[7])
local entry = ARGV[3] .. ',"amount":' .. delta .. ',"balance_after":' .. string.format('%d', after)
  .. ',"seq":' .. string.format('%d', seq) .. '}'
redis.call('XADD', KEYS[3], '*', 'e', entry)
redis.call('HSET', KEYS[4], ARGV[8], entry)
redis.call('LPUSH', KEYS[2], entry)
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[6]) - 1)
if idem then
  redis.call('HSET', idem, 'fingerprint', ARGV[4], 'balance_before', raw, 'entry', entry)
  redis.call('EXPIRE', idem, ARGV[5])
end
if marker then
  redis.call('SET', marker, ARGV[8])
end
-- HSETNX lets exactly one of many concurrent deducts below the threshold start the top-up; the
-- worker clears `pending` when the top-up is over.
local started = 0
if threshold and after < tonumber(threshold)
    and redis.call('HSETNX', top_up, 'pending', ARGV[8]) == 1 then
  redis.call('ZADD', top_up_due, ARGV[7], ARGV[10])
  started = 1
end
return {'ok', raw, entry, started}

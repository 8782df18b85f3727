-- apply_entry.lua: post one ledger entry (add, deduct or refund) to an account, at most once per
-- idempotency key, and a refund at most once per refunded entry. Grant credits are burned and
-- given back here; what is due to expire expires first (lua/account.lua).
-- Called by engine.ledger.credits.Credits (one entry, or many pipelined for a batch).
--
-- KEYS[1..7] account hash, recent list, the shard's outbox stream, the shard's
--            unpersisted-entries hash, grants hash, holds hash, the shard's expiry-due set
-- next, as ARGV[8] names them: "i" idempotency record, "r" refund marker of the refunded entry,
--       "t" the account's auto top-up hash and its shard's top-up-due set, "l" the app's plan
--       usage hash for this shard and month
--
-- ARGV[1] delta: signed integer, |delta| in 1..2^53-1
-- ARGV[2] floor: lowest balance a negative delta may leave (0, or -overdraft limit); held
--         credits count as spent
-- ARGV[3] entry JSON without amount and closing brace, ledger_id first; the script appends
--         amount, balance_after, seq and the grants the entry drew from or gave back to
-- ARGV[4] request fingerprint (compared on a repeated idempotency key)
-- ARGV[5] idempotency TTL in seconds
-- ARGV[6] now, epoch milliseconds
-- ARGV[7] ledger_id of the entry (the grant_id of a grant)
-- ARGV[8] mode, any of: "i", "r", "t" (keys above); "c" take only what the floor allows when a
--         negative delta would cross it; "g" the entry is a grant expiring at ARGV[10];
--         "x" a refund of the grant ARGV[10]: it takes what is left of it, whatever the delta;
--         "p" a negative delta takes credits that never expire first (a refunded purchase),
--         else grant credits go first (soonest expiry first); "l" the entry is one of the
--         app's operations, counted against its plan's ARGV[12] a month
-- ARGV[9] the account's member in the top-up-due set, when ARGV[8] has "t"
-- ARGV[10] see "g" and "x"
-- ARGV[11] thresholds to watch (lua/account.lua watch()), "" for none
-- ARGV[12] see "l"
-- ARGV[13..] a refund of an entry that drew from grants: grant_id, credits, ... to give back
--
-- A positive delta may not take the balance above 2^53-1 (exact in doubles and JavaScript).
--
-- Returns one of:
--   {"ok", balance_before, entry_json, top_up, available}  top_up is 1 when this entry started
--                                            an auto top-up (at most one pending per account)
--   {"replay", balance_before, ledger_id, top_up, available, created_at, amount}  the first
--                                            result of this key (lua/account.lua replay())
--   {"replay_entry", balance_before, entry_json, 0, available}  the same, from a record the
--                                            previous version stored
--   {"conflict"}                             the key was used with a different request
--   {"refunded", ledger_id}                  the refunded entry already has this refund
--   {"missing"}                              no account in Redis: hydrate it, then call again
--   {"insufficient", balance, available}     below the floor (or at it, when clamping)
--   {"overflow", balance}                    above the ceiling
--   {"grant_gone"} / {"grant_spent"}         "x": the grant expired / has nothing left
--   {"too_many_grants"}                      "g": the account has MAX_GRANTS active grants
--   {"plan_limit", used}                     "l": the app used its plan's operations
-- Nothing is written unless the answer is "ok" (expiries that were due excepted).
--
-- Every check comes before the first write: Redis never rolls a script back. Numbers are turned
-- into text with %d only, because Lua's tostring rounds past 14 digits.

local mode = ARGV[8]
local st, reply = start(mode, ARGV[6], ARGV[3], ARGV[7], ARGV[4], ARGV[5], ARGV[11])
if not st then
  return reply
end
local refused = plan_refusal(ARGV[12])
if refused then
  return refused
end
if A.marker then
  local refund = redis.call('GET', A.marker)
  if refund then
    finish()
    return {'refunded', refund}
  end
end

local delta = tonumber(ARGV[1])
local floor = tonumber(ARGV[2])
local refunded_grant
if string.find(mode, 'x', 1, true) then
  local value = redis.call('HGET', A.grants, ARGV[10])
  if not value then
    finish()
    return {'grant_gone'}
  end
  refunded_grant = lib().parse_grant(ARGV[10], value)
  if refunded_grant.left == 0 then
    finish()
    return {'grant_spent'}
  end
  delta = -refunded_grant.left
end
local before = st.balance
local available = before - st.held
if delta < 0 and available + delta < floor then
  if not string.find(mode, 'c', 1, true) or available <= floor then
    finish()
    return {'insufficient', fmt(before), fmt(available)}
  end
  delta = floor - available
end
if delta > 0 and before + delta > CEILING then
  finish()
  return {'overflow', fmt(before)}
end
local grant_expires
if string.find(mode, 'g', 1, true) then
  grant_expires = tonumber(ARGV[10])
  if redis.call('HLEN', A.grants) >= MAX_GRANTS then
    finish()
    return {'too_many_grants'}
  end
end
local threshold = top_up_threshold(-delta)

-- Writes from here on.
-- Grant credits move only for grants, refunds, and accounts with grant credits left.
local parts, sign, dead = {}, -1, {}
if refunded_grant then
  redis.call('HDEL', A.grants, refunded_grant.id)
  lib().set_granted(st, st.granted - refunded_grant.left)
  parts = {{refunded_grant.id, refunded_grant.left}}
elseif delta < 0 and st.granted > 0 and string.find(mode, 'p', 1, true) then
  local lasting = math.max(0, before - st.held - st.granted)
  parts = lib().burn(st, -delta - math.min(-delta, lasting))
elseif delta < 0 and st.granted > 0 then
  parts = lib().burn(st, -delta)
elseif ARGV[13] then
  local taken = {}
  for i = 13, #ARGV, 2 do
    taken[#taken + 1] = {ARGV[i], tonumber(ARGV[i + 1])}
  end
  -- Credits that pay back an overdraft stay spent: the refund lists what went back.
  local _, gone, repaid = lib().give_back(st, taken, before + delta)
  parts, sign, dead = lib().minus(taken, repaid), 1, gone
end
-- A grant first pays back an overdraft, recorded as taken from it: what it covered no longer
-- expires with it.
local repaid = 0
if grant_expires then
  repaid = lib().overdraft_share(st, before + delta, delta)
  if repaid > 0 then
    parts = {{ARGV[7], repaid}}
  end
end
local entry, seq = post(st, ARGV[7], ARGV[3], delta, grants_json(parts, sign))
if grant_expires then
  local left = delta - repaid
  local G = lib()
  redis.call('HSET', A.grants, ARGV[7],
    G.grant_value({expires = grant_expires, seq = seq, left = left}))
  G.set_granted(st, st.granted + left)
  G.sooner(st, grant_expires)
end
if #dead > 0 then
  lib().expire_parts(st, dead)
end
finish()
count_operation()
if A.marker then
  redis.call('SET', A.marker, ARGV[7])
end
local started = start_top_up(threshold, st.balance, ARGV[7], ARGV[9])
available = st.balance - st.held
remember(before, delta, available, started)
return {'ok', fmt(before), entry, started, fmt(available)}

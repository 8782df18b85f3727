-- hold.lua: reserve credits for work whose cost is known only afterwards. Nothing leaves the
-- balance; what is held cannot be spent by anything else until the hold is captured, released
-- or expires. Grant credits are reserved first, in burn order, so that a capture spends what a
-- deduct would have. Called by engine.holds.service.Holds.create.
--
-- KEYS[1..7] as apply_entry.lua; then, as ARGV[8] names them: "i" idempotency record, "l" the
--            app's plan usage hash (as apply_entry.lua)
-- ARGV[1] amount, 1..2^53-1
-- ARGV[2] floor (0, or -overdraft limit)
-- ARGV[3] the hold's entry JSON (kind "hold", with hold_id and expires_at) without its
--         closing brace, ledger_id first
-- ARGV[4] request fingerprint; ARGV[5] idempotency TTL, seconds
-- ARGV[6] now, epoch milliseconds
-- ARGV[7] ledger_id of the hold's entry
-- ARGV[8] mode: any of "i", "l"
-- ARGV[9] the hold's token (its field in the holds hash)
-- ARGV[10] when it expires, epoch milliseconds
-- ARGV[11] thresholds to watch, as apply_entry.lua
-- ARGV[12] operations a month the app's plan allows, when ARGV[8] has "l"
--
-- Returns {"ok", balance, entry_json, 0, available} (the entry's `held` is the amount),
-- {"replay", balance, ledger_id, 0, available, created_at, 0, token} (lua/account.lua
-- replay(); the token names the hold), {"replay_entry", ...} as apply_entry.lua,
-- {"conflict"}, {"missing"}, {"insufficient", balance, available}, {"too_many_holds"} or
-- {"plan_limit", used}.

local st, reply = start(ARGV[8], ARGV[6], ARGV[3], ARGV[7], ARGV[4], ARGV[5], ARGV[11])
if not st then
  return reply
end
local refused = plan_refusal(ARGV[12])
if refused then
  return refused
end

local amount = tonumber(ARGV[1])
local available = st.balance - st.held
if available - amount < tonumber(ARGV[2]) then
  finish()
  return {'insufficient', fmt(st.balance), fmt(available)}
end
if redis.call('HLEN', A.holds) >= MAX_HOLDS then
  finish()
  return {'too_many_holds'}
end

local G = lib()
local taken = G.burn(st, amount)
local entry = post(st, ARGV[7], ARGV[3], 0, grants_json(taken, -1) .. ',"held":' .. fmt(amount))
local expires = tonumber(ARGV[10])
redis.call('HSET', A.holds, ARGV[9], G.hold_value(expires, amount, taken, entry))
if #taken > 0 then
  G.set_reserved(st, G.reserved(st) + G.total(taken))
end
st.held = st.held + amount
redis.call('HSET', A.account, 'held', fmt(st.held))
G.sooner(st, expires)
finish()
count_operation()
remember(st.balance, 0, st.balance - st.held, 0, ARGV[9])
return {'ok', fmt(st.balance), entry, 0, fmt(st.balance - st.held)}

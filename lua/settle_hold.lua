-- settle_hold.lua: capture a hold (spend part or all of it, release the rest) or release it,
-- exactly once: a second settle, or one after the hold expired, is refused.
-- Called by engine.holds.service.Holds.capture and .release.
--
-- KEYS[1..7] as apply_entry.lua; then, as ARGV[9] names them and in this order: "i" idempotency
--            hash, "t" the auto top-up hash and top-up-due set, "e" the hold's end record
--            (always present)
-- ARGV[1] credits to capture, 1..the hold's amount; "" for all of it; "0" to release
-- ARGV[2] the hold's token
-- ARGV[3] the settling entry's JSON (kind "deduct" or "release", with hold_id) without its
--         closing brace, ledger_id first
-- ARGV[4] request fingerprint; ARGV[5] idempotency TTL, seconds
-- ARGV[6] length of the recent-entries list
-- ARGV[7] now, epoch milliseconds
-- ARGV[8] ledger_id of the settling entry
-- ARGV[9] mode: "e" and any of "i", "t"
-- ARGV[10] how long the end record is kept, milliseconds
-- ARGV[11] the account's member in the top-up-due set, when ARGV[9] has "t"
-- ARGV[12] thresholds to watch, as apply_entry.lua (a capture never lowers what the user can
--          spend, but an expiry that was due may)
--
-- Returns {"ok", balance_before, entry_json, top_up, available}, {"replay", ...},
-- {"conflict"}, {"missing"}, {"ended", "captured|released <ledger_id>"} (settled before),
-- {"gone"} (no such active hold: it expired, or never was), or {"too_much", amount}.

-- An expiry that is due wins over this settle (start() expires it): the hold is then gone.
local st, reply = start(ARGV[9], ARGV[7], ARGV[6], ARGV[3], ARGV[8], ARGV[4], ARGV[5], ARGV[12])
if not st then
  return reply
end

local value = redis.call('HGET', A.holds, ARGV[2])
if not value then
  finish()
  local ended = redis.call('GET', A.hold_end)
  if ended then
    return {'ended', ended}
  end
  return {'gone'}
end
local G = lib()
local h = G.parse_hold(ARGV[2], value)
local captured = h.amount
if ARGV[1] ~= '' then
  captured = tonumber(ARGV[1])
end
if captured > h.amount then
  finish()
  return {'too_much', fmt(h.amount)}
end
local threshold = top_up_threshold(captured)

local before = st.balance
local entry = G.end_hold(st, h, ARGV[8], ARGV[3], captured)
local outcome = 'released '
if captured > 0 then
  outcome = 'captured '
end
redis.call('SET', A.hold_end, outcome .. ARGV[8], 'PX', ARGV[10])
finish()
remember(before, entry, st.balance - st.held)
local started = start_top_up(threshold, st.balance, ARGV[8], ARGV[11])
return {'ok', fmt(before), entry, started, fmt(st.balance - st.held)}

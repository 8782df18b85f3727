-- settle_hold.lua: capture a hold (spend part or all of it, release the rest) or release it,
-- exactly once: a second settle, or one after the hold expired, is refused.
-- Called by engine.holds.service.Holds.capture and .release.
--
-- KEYS[1..7] as apply_entry.lua; then, as ARGV[8] names them and in this order: "i" idempotency
--            record, "t" the auto top-up hash and top-up-due set, "e" the hold's end record
--            (always present)
-- ARGV[1] credits to capture, 1..the hold's amount; "" for all of it; "0" to release
-- ARGV[2] the hold's token
-- ARGV[3] the settling entry's JSON (kind "deduct" or "release", with hold_id) without its
--         closing brace, ledger_id first
-- ARGV[4] request fingerprint; ARGV[5] idempotency TTL, seconds
-- ARGV[6] now, epoch milliseconds
-- ARGV[7] ledger_id of the settling entry
-- ARGV[8] mode: "e" and any of "i", "t"
-- ARGV[9] how long the end record is kept, milliseconds
-- ARGV[10] the account's member in the top-up-due set, when ARGV[8] has "t"
-- ARGV[11] thresholds to watch, as apply_entry.lua (a capture never lowers what the user can
--          spend, but an expiry that was due may)
--
-- Returns {"ok", balance_before, entry_json, top_up, available},
-- {"replay", balance_before, ledger_id, top_up, available, created_at, amount, held} (held: the
-- hold's amount; lua/account.lua replay()), {"replay_entry", ...} as apply_entry.lua,
-- {"conflict"}, {"missing"}, {"ended", "captured|released <ledger_id>"} (settled before),
-- {"gone"} (no such active hold: it expired, or never was), or {"too_much", amount}.

-- An expiry that is due wins over this settle (start() expires it): the hold is then gone.
local st, reply = start(ARGV[8], ARGV[6], ARGV[3], ARGV[7], ARGV[4], ARGV[5], ARGV[11])
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
local entry = G.end_hold(st, h, ARGV[7], ARGV[3], captured)
local outcome = 'released '
if captured > 0 then
  outcome = 'captured '
end
redis.call('SET', A.hold_end, outcome .. ARGV[7], 'PX', ARGV[9])
finish()
local started = start_top_up(threshold, st.balance, ARGV[7], ARGV[10])
local available = st.balance - st.held
remember(before, -captured, available, started, fmt(h.amount))
return {'ok', fmt(before), entry, started, fmt(available)}

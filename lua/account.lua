-- account.lua: what the scripts that change an account share. engine.store.scripts makes this
-- text and apply_entry.lua, apply_batch.lua, hold.lua, settle_hold.lua and expire_due.lua one
-- library of Redis Functions, each script a function's body that starts with fresh() (a
-- library's locals outlive a call); for EVAL it puts this text in front of each. Each fills `A`
-- from its KEYS and ARGV before calling anything here.
--
-- The account hash: balance, seq, updated_at; held (credits reserved by active holds), granted
-- (credits left in active grants and not reserved), reserved (the grant credits among the
-- held), due (epoch ms when its next grant or hold expires; absent while it has none).
-- balance - granted - reserved never expires; it is the one part an overdraft takes below
-- zero, and only while no grant has credits: grant credits pay an overdraft back first.
-- The grants hash: grant_id (the ledger_id of its add) -> "expires_ms seq left".
-- The holds hash: token -> "expires_ms amount reserved entry_json", where `reserved` lists the
-- grant credits the hold took, in burn order, as "grant_id=n,grant_id=n" (may be empty) and
-- entry_json is the hold's own ledger entry.

local A = {}
local CEILING = 9007199254740991
-- Bounds on one account's active grants and holds: each script that expires or burns them
-- walks them all.
local MAX_GRANTS = 1000
local MAX_HOLDS = 1000

local function fmt(n)
  return string.format('%d', n)
end

local function state()
  local s = redis.call('HMGET', A.account, 'balance', 'held', 'granted', 'due', 'seq')
  if not s[1] then
    return nil
  end
  return {balance = tonumber(s[1]), held = tonumber(s[2]) or 0, granted = tonumber(s[3]) or 0,
          due = tonumber(s[4]), seq = tonumber(s[5]) or 0}
end

local extra = 0

-- Append one entry: balance, seq, outbox, unpersisted hash and recent list move together.
-- The recent list names the account's entries not in PostgreSQL yet, newest first, by id (the
-- entries are in the unpersisted hash): the worker takes an id out after its COMMIT
-- (engine.ledger.outbox), and nothing else does, so an entry the list does not name is in the
-- ledger (lua/evict_account.lua relies on it; history reads the rest from PostgreSQL).
-- The account's balance, seq and clock are written in one HSET from the state read at the
-- start (state()), which every write of the script keeps up to date: one call, not three.
local function post(st, id, head, amount, tail)
  local after, seq = st.balance + amount, st.seq + 1
  redis.call('HSET', A.account, 'balance', fmt(after), 'seq', fmt(seq), 'updated_at', A.now_text)
  st.seq = seq
  local entry = head .. ',"amount":' .. fmt(amount) .. ',"balance_after":' .. fmt(after)
    .. ',"seq":' .. fmt(seq) .. tail .. '}'
  redis.call('XADD', A.outbox, '*', 'e', entry)
  redis.call('HSET', A.unpersisted, id, entry)
  redis.call('LPUSH', A.recent, id)
  st.balance = after
  A.posted, A.last_id, A.last_seq = true, id, seq
  return entry, seq
end

local function member()
  return string.match(A.account, ':acct:(.*)$')
end

-- `"app_id":...,"user_id":...` of the account, cut from the call's entry head, whose first
-- field is always the 36-character ledger_id.
local function who()
  if not A.who then
    A.who = string.sub(A.head, 53, string.find(A.head, ',"kind":', 1, true) - 1)
  end
  return A.who
end

-- balance.low and balance.depleted are decided here, where every change of an account is
-- serialized: of many concurrent deducts exactly one takes the credits the user can spend
-- from above a threshold to at or below it. A.watch is "top floor t1 t2 ..." (top: the highest
-- of them, so that most calls stop at the first number); the crossing goes to the shard's
-- outbox with the entries that made it, and becomes events when the worker persists them.
local function watch(st)
  local after = st.balance - st.held
  if after >= A.before or after > tonumber(string.match(A.watch, '^%S+')) then
    return
  end
  local numbers, crossed = {}, {}
  for n in string.gmatch(A.watch, '%S+') do
    numbers[#numbers + 1] = n
  end
  local function past(t)
    return A.before > t and after <= t
  end
  for i = 3, #numbers do
    if past(tonumber(numbers[i])) then
      crossed[#crossed + 1] = numbers[i]
    end
  end
  local floor = tonumber(numbers[2])
  local depleted = past(floor) and 'true' or 'false'
  if #crossed == 0 and depleted == 'false' then
    return
  end
  redis.call('XADD', A.outbox, '*', 'v', '{"ledger_id":"' .. A.last_id .. '",' .. who()
    .. ',"seq":' .. fmt(A.last_seq) .. ',"balance":' .. fmt(st.balance) .. ',"available":'
    .. fmt(after) .. ',"available_before":' .. fmt(A.before) .. ',"floor":' .. fmt(floor)
    .. ',"thresholds":[' .. table.concat(crossed, ',') .. '],"depleted":' .. depleted
    .. ',"created_at":' .. A.now_text .. '}')
end

-- Ends every script that posted: whether the user's credits fell past a threshold. (The
-- account's clock, updated_at, which also tells an idle account to engine.ledger.eviction, moves
-- with every post().)
local function finish()
  if A.posted and A.watch and A.watch ~= '' then
    watch(A.st)
  end
end

-- ,"grants":[...] for parts {{grant_id, n}, ...}, each amount times `sign`.
local function grants_json(parts, sign)
  if #parts == 0 then
    return ''
  end
  local out = {}
  for i, p in ipairs(parts) do
    out[i] = '{"grant_id":"' .. p[1] .. '","amount":' .. fmt(sign * p[2]) .. '}'
  end
  return ',"grants":[' .. table.concat(out, ',') .. ']'
end

-- Grants and holds, built only by the calls that need them: a plain add or deduct on an
-- account without either never pays for making these functions.
local function grants_and_holds()
  -- Entries a script adds of its own (expiries) take ids made from the call's ledger_id: the
  -- version nibble 8 (the API's ids have 7) keeps them apart from every id the API makes, and the
  -- last six bits still name the shard.
  local function derived_id()
    extra = extra + 1
    return string.sub(A.id, 1, 14) .. '8' .. string.format('%03x', extra) .. string.sub(A.id, 19)
  end

  local function head_of(id, kind)
    return '{"ledger_id":"' .. id .. '",' .. who() .. ',"kind":"' .. kind
      .. '","description":null,"reference_id":null,"metadata":null,"idempotency_key":null,'
      .. '"refund_of":null,"created_at":' .. A.now_text
  end

  local function parse_grant(id, value)
    local e, s, l = string.match(value, '^(%d+) (%d+) (%d+)$')
    return {id = id, expires = tonumber(e), seq = tonumber(s), left = tonumber(l)}
  end

  local function grant_value(g)
    return fmt(g.expires) .. ' ' .. fmt(g.seq) .. ' ' .. fmt(g.left)
  end

  -- Soonest expiry first; at the same moment, the lower seq (an older grant; holds have -1).
  local function earlier(a, b)
    if a.expires ~= b.expires then
      return a.expires < b.expires
    end
    return a.seq < b.seq
  end

  -- Active grants in burn order.
  local function grants_in_order()
    local raw = redis.call('HGETALL', A.grants)
    local list = {}
    for i = 1, #raw, 2 do
      list[#list + 1] = parse_grant(raw[i], raw[i + 1])
    end
    table.sort(list, earlier)
    return list
  end

  local function set_granted(st, granted)
    st.granted = granted
    redis.call('HSET', A.account, 'granted', fmt(granted))
  end

  -- Take up to `amount` credits out of the grants in burn order; returns {{grant_id, n}, ...}.
  local function burn(st, amount)
    local parts = {}
    if st.granted <= 0 or amount <= 0 then
      return parts
    end
    local taken = 0
    for _, g in ipairs(grants_in_order()) do
      if taken >= amount then
        break
      end
      local n = math.min(g.left, amount - taken)
      if n > 0 then
        g.left = g.left - n
        redis.call('HSET', A.grants, g.id, grant_value(g))
        parts[#parts + 1] = {g.id, n}
        taken = taken + n
      end
    end
    set_granted(st, st.granted - taken)
    return parts
  end

  local function reserved(st)
    if not st.reserved then
      st.reserved = tonumber(redis.call('HGET', A.account, 'reserved')) or 0
    end
    return st.reserved
  end

  local function set_reserved(st, value)
    st.reserved = value
    redis.call('HSET', A.account, 'reserved', fmt(value))
  end

  local function total(parts)
    local sum = 0
    for _, p in ipairs(parts) do
      sum = sum + p[2]
    end
    return sum
  end

  -- How much of `amount` grant credits coming in pays back an overdraft first, the balance
  -- being `balance` with them (and with `extra` more credits about to expire again at once).
  local function overdraft_share(st, balance, amount, extra)
    local lasting = balance - st.granted - reserved(st) - amount - (extra or 0)
    return math.max(0, math.min(amount, -lasting))
  end

  -- Put grant credits back where they came from, the balance being `balance` with them.
  -- Returns three part lists: given back to live grants; whose grant is gone (expired or
  -- refunded), which must expire now, never stay as credits that do not expire; and spent
  -- paying back an overdraft (live grants' credits only).
  local function give_back(st, parts, balance)
    local live, dead = {}, {}
    for _, p in ipairs(parts) do
      local value = redis.call('HGET', A.grants, p[1])
      if value then
        live[#live + 1] = {p[1], p[2], parse_grant(p[1], value)}
      else
        dead[#dead + 1] = {p[1], p[2]}
      end
    end
    local repay = overdraft_share(st, balance, total(live), total(dead))
    local back, repaid, gave = {}, {}, 0
    for _, p in ipairs(live) do
      local r = math.min(p[2], repay)
      if r > 0 then
        repaid[#repaid + 1] = {p[1], r}
        repay = repay - r
      end
      if p[2] > r then
        local g = p[3]
        g.left = g.left + p[2] - r
        redis.call('HSET', A.grants, p[1], grant_value(g))
        back[#back + 1] = {p[1], p[2] - r}
        gave = gave + p[2] - r
      end
    end
    if gave > 0 then
      set_granted(st, st.granted + gave)
    end
    return back, dead, repaid
  end

  -- Parts lists joined, each grant once, in first-seen order.
  local function merged(...)
    local out, at = {}, {}
    for _, parts in ipairs({...}) do
      for _, p in ipairs(parts) do
        if at[p[1]] then
          out[at[p[1]]][2] = out[at[p[1]]][2] + p[2]
        else
          out[#out + 1] = {p[1], p[2]}
          at[p[1]] = #out
        end
      end
    end
    return out
  end

  -- `parts` less `spent` (both {{grant_id, n}, ...}), in the order of `parts`.
  local function minus(parts, spent)
    local out = {}
    for _, p in ipairs(merged(parts)) do
      local n = p[2]
      for _, q in ipairs(spent) do
        if q[1] == p[1] then
          n = n - q[2]
        end
      end
      if n > 0 then
        out[#out + 1] = {p[1], n}
      end
    end
    return out
  end

  local function expire_parts(st, parts)
    local gone = total(parts)
    if gone > 0 then
      local id = derived_id()
      post(st, id, head_of(id, 'expire'), -gone, grants_json(parts, -1))
    end
  end

  -- `due` may be early (a hold settled since), never late: an early pass finds nothing.
  local function set_due(st, due)
    if due == st.due then
      return
    end
    st.due = due
    if due then
      redis.call('HSET', A.account, 'due', fmt(due))
      redis.call('ZADD', A.due_set, fmt(due), member())
    else
      redis.call('HDEL', A.account, 'due')
      redis.call('ZREM', A.due_set, member())
    end
  end

  local function sooner(st, expires)
    if not st.due or expires < st.due then
      set_due(st, expires)
    end
  end

  local function parse_hold(token, value)
    local e, a, r, j = string.match(value, '^(%d+) (%d+) (%S*) (.*)$')
    local reserved = {}
    for id, n in string.gmatch(r, '([^,=]+)=(%d+)') do
      reserved[#reserved + 1] = {id, tonumber(n)}
    end
    return {token = token, expires = tonumber(e), amount = tonumber(a), reserved = reserved,
            entry = j, hold_id = string.match(j, '"hold_id":"([^"]+)"')}
  end

  local function hold_value(expires, amount, reserved, entry)
    local out = {}
    for i, p in ipairs(reserved) do
      out[i] = p[1] .. '=' .. fmt(p[2])
    end
    return fmt(expires) .. ' ' .. fmt(amount) .. ' ' .. table.concat(out, ',') .. ' ' .. entry
  end

  -- Settle a hold: `captured` credits leave the balance, the grant credits it reserved first, then
  -- as a deduct would (grants first); the rest of the hold goes back where it came from. One entry
  -- listing the grant credits spent (those that paid back an overdraft too).
  local function end_hold(st, h, id, head, captured)
    local consumed, returned, left = {}, {}, captured
    for _, p in ipairs(h.reserved) do
      local n = math.min(p[2], left)
      if n > 0 then
        consumed[#consumed + 1] = {p[1], n}
        left = left - n
      end
      if p[2] > n then
        returned[#returned + 1] = {p[1], p[2] - n}
      end
    end
    redis.call('HDEL', A.holds, h.token)
    st.held = st.held - h.amount
    redis.call('HSET', A.account, 'held', fmt(st.held))
    set_reserved(st, reserved(st) - total(h.reserved))
    local burned = burn(st, left)
    local _, dead, repaid = give_back(st, returned, st.balance - captured)
    local entry = post(st, id, head, -captured, grants_json(merged(consumed, burned, repaid), -1)
      .. ',"hold_id":"' .. h.hold_id .. '","held":' .. fmt(-h.amount))
    expire_parts(st, dead)
    return entry
  end

  -- Expire every grant and hold whose time has come, each exactly once, as entries, in the order
  -- they came due: a hold that ended before its grant's expiry gave its credits back in time to
  -- leave with the grant's.
  local function expire_due(st)
    if not st.due or st.due > A.now then
      return
    end
    local due, next_due = {}, nil
    for _, g in ipairs(grants_in_order()) do
      if g.expires <= A.now then
        due[#due + 1] = {expires = g.expires, seq = g.seq, grant = g.id}
      elseif not next_due or g.expires < next_due then
        next_due = g.expires
      end
    end
    local raw = redis.call('HGETALL', A.holds)
    for i = 1, #raw, 2 do
      local h = parse_hold(raw[i], raw[i + 1])
      if h.expires <= A.now then
        due[#due + 1] = {expires = h.expires, seq = -1, hold = h}
      elseif not next_due or h.expires < next_due then
        next_due = h.expires
      end
    end
    -- Holds before grants due at the same moment, for the same reason.
    table.sort(due, earlier)
    for _, item in ipairs(due) do
      if item.hold then
        local id = derived_id()
        end_hold(st, item.hold, id, head_of(id, 'hold_expire'), 0)
      else
        local g = parse_grant(item.grant, redis.call('HGET', A.grants, item.grant))
        redis.call('HDEL', A.grants, g.id)
        if g.left > 0 then
          set_granted(st, st.granted - g.left)
          local id = derived_id()
          post(st, id, head_of(id, 'expire'), -g.left, grants_json({{g.id, g.left}}, -1))
        end
      end
    end
    set_due(st, next_due)
  end

  return {
    burn = burn,
    give_back = give_back,
    merged = merged,
    minus = minus,
    expire_parts = expire_parts,
    set_due = set_due,
    sooner = sooner,
    parse_grant = parse_grant,
    grant_value = grant_value,
    set_granted = set_granted,
    parse_hold = parse_hold,
    hold_value = hold_value,
    end_hold = end_hold,
    expire_due = expire_due,
    reserved = reserved,
    set_reserved = set_reserved,
    total = total,
    overdraft_share = overdraft_share,
  }
end

local function lib()
  if not A.lib then
    A.lib = grants_and_holds()
  end
  return A.lib
end

-- Idempotency. A key's record is one string: "fingerprint balance_before ledger_id top_up
-- available created_at amount [extra]", what the first reply said that the repeated request
-- does not (each script names its `extra`); the entry itself goes on to PostgreSQL. A replay
-- returns the record's fields after the fingerprint, in that order, behind "replay".
local function replay_hash()
  -- A hash is a record the previous version wrote, kept no longer than the idempotency TTL: it
  -- holds the whole entry, and a fingerprint twice as long (the new one is its first half).
  local s = redis.call('HMGET', A.idem, 'fingerprint', 'balance_before', 'entry', 'available')
  if string.sub(s[1], 1, #A.fingerprint) ~= A.fingerprint then
    return {'conflict'}
  end
  return {'replay_entry', s[2], s[3], 0, s[4] or false}
end

-- The stored first answer of a key, "conflict", or nil (a first use).
local function replay()
  if not A.idem then
    return nil
  end
  local stored = redis.pcall('GET', A.idem)
  if type(stored) == 'table' then
    return replay_hash()
  end
  if not stored then
    return nil
  end
  local fingerprint, rest = string.match(stored, '^(%S+) (.*)$')
  if fingerprint ~= A.fingerprint then
    return {'conflict'}
  end
  local reply = {'replay'}
  for field in string.gmatch(rest, '%S+') do
    reply[#reply + 1] = field
  end
  return reply
end

local function remember(balance_before, amount, available, top_up, extra)
  if A.idem then
    local record = A.fingerprint .. ' ' .. fmt(balance_before) .. ' ' .. A.id .. ' ' .. fmt(top_up)
      .. ' ' .. fmt(available) .. ' ' .. A.now_text .. ' ' .. fmt(amount)
    if extra then
      record = record .. ' ' .. extra
    end
    redis.call('SET', A.idem, record, 'EX', A.idem_ttl)
  end
end

-- Auto top-up: HSETNX lets exactly one of many concurrent deducts below the threshold start
-- it; the worker clears `pending` when the top-up is over.
local function top_up_threshold(amount)
  if A.top_up and amount > 0 then
    return redis.call('HGET', A.top_up, 'threshold')
  end
  return nil
end

local function start_top_up(threshold, balance, ledger_id, top_up_member)
  if threshold and balance < tonumber(threshold)
      and redis.call('HSETNX', A.top_up, 'pending', ledger_id) == 1 then
    redis.call('ZADD', A.top_up_due, A.now_text, top_up_member)
    return 1
  end
  return 0
end

-- Plan limits (engine/plans): the app's usage hash in this shard for this month counts its
-- operations here (`n`) and holds what the worker last summed of the other shards' (`others`).
-- Returns the reply refusing an operation when `allowed` ("" for no cap) leaves no room for
-- one more, else nil.
local function plan_refusal(allowed)
  if not A.plan or allowed == '' then
    return nil
  end
  local u = redis.call('HMGET', A.plan, 'n', 'others')
  local used = (tonumber(u[1]) or 0) + (tonumber(u[2]) or 0)
  if used < tonumber(allowed) then
    return nil
  end
  finish()
  return {'plan_limit', fmt(used)}
end

local function count_operation()
  -- Kept 40 days from a month's first operation in the shard, whoever sums them (engine/plans).
  if A.plan and redis.call('HINCRBY', A.plan, 'n', 1) == 1 then
    redis.call('EXPIRE', A.plan, 3456000)
  end
end

-- Reads KEYS[1..7] (account, recent, outbox, unpersisted, grants, holds, due set), then the
-- optional keys `mode` names, in this order: "i" idempotency, "r" refund marker, "t" top-up
-- hash and top-up-due set, "e" a settled hold's end record, "l" the app's plan usage hash.
-- `kb`: how many KEYS come before the call's own (apply_batch.lua's earlier entries), else 0.
local function open(mode, now, head, id, kb)
  kb = kb or 0
  A.account, A.recent, A.outbox, A.unpersisted = KEYS[kb + 1], KEYS[kb + 2], KEYS[kb + 3],
    KEYS[kb + 4]
  A.grants, A.holds, A.due_set = KEYS[kb + 5], KEYS[kb + 6], KEYS[kb + 7]
  A.now_text, A.now = now, tonumber(now)
  A.head, A.id = head, id
  local k = kb + 8
  if string.find(mode, 'i', 1, true) then
    A.idem = KEYS[k]
    k = k + 1
  end
  if string.find(mode, 'r', 1, true) then
    A.marker = KEYS[k]
    k = k + 1
  end
  if string.find(mode, 't', 1, true) then
    A.top_up, A.top_up_due = KEYS[k], KEYS[k + 1]
    k = k + 2
  end
  if string.find(mode, 'e', 1, true) then
    A.hold_end = KEYS[k]
    k = k + 1
  end
  if string.find(mode, 'l', 1, true) then
    A.plan = KEYS[k]
  end
end

-- How every script that posts entries begins: its keys and arguments read, a repeated
-- idempotency key answered, the account found (else "missing": the caller rebuilds it from the
-- ledger and calls again), and what is due expired. `watch`: see watch(). Returns the
-- account's state, or the reply to give at once.
local function start(mode, now, head, id, fingerprint, idem_ttl, watch_arg, kb)
  open(mode, now, head, id, kb)
  A.fingerprint, A.idem_ttl = fingerprint, idem_ttl
  local stored = replay()
  if stored then
    return nil, stored
  end
  local st = state()
  if not st then
    return nil, {'missing'}
  end
  A.st, A.before, A.watch = st, st.balance - st.held, watch_arg
  if st.due and st.due <= A.now then
    lib().expire_due(st)
  end
  return st
end

-- A batch posts many entries in one call (apply_batch.lua): each starts from a clean slate, as
-- if it were its own call. The grants-and-holds functions are kept: they read `A` afresh.
local function fresh()
  A = {lib = A.lib}
  extra = 0
end

-- apply_entry.lua's whole work, for apply_entry.lua (one entry) and apply_batch.lua (many): its
-- keys are KEYS[kb + 1 ..], its arguments ARGV[ab + 1 .. last], numbered as apply_entry.lua
-- documents them (ARGV[13..] there is ARGV[ab + 13 .. last] here). Returns the reply.
local function apply_entry(kb, ab, last)
  local mode, head, id = ARGV[ab + 8], ARGV[ab + 3], ARGV[ab + 7]
  local st, reply = start(mode, ARGV[ab + 6], head, id, ARGV[ab + 4], ARGV[ab + 5],
    ARGV[ab + 11], kb)
  if not st then
    return reply
  end
  local refused = plan_refusal(ARGV[ab + 12])
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

  local delta = tonumber(ARGV[ab + 1])
  local floor = tonumber(ARGV[ab + 2])
  local refunded_grant
  if string.find(mode, 'x', 1, true) then
    local value = redis.call('HGET', A.grants, ARGV[ab + 10])
    if not value then
      finish()
      return {'grant_gone'}
    end
    refunded_grant = lib().parse_grant(ARGV[ab + 10], value)
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
    grant_expires = tonumber(ARGV[ab + 10])
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
  elseif last >= ab + 13 then
    local taken = {}
    for i = ab + 13, last, 2 do
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
      parts = {{id, repaid}}
    end
  end
  local entry, seq = post(st, id, head, delta, grants_json(parts, sign))
  if grant_expires then
    local left = delta - repaid
    local G = lib()
    redis.call('HSET', A.grants, id,
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
    redis.call('SET', A.marker, id)
  end
  local started = start_top_up(threshold, st.balance, id, ARGV[ab + 9])
  available = st.balance - st.held
  remember(before, delta, available, started)
  return {'ok', fmt(before), entry, started, fmt(available)}
end

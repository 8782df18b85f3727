-- evict_account.lua: take an idle account out of Redis, leaving a tombstone, once PostgreSQL
-- has every entry of it. The next request that needs the account rebuilds it from the ledger
-- (engine.ledger.hydration): balance, seq, grants and holds.
-- Called by engine.ledger.eviction for the accounts its scan finds.
--
-- KEYS[1] account hash
-- KEYS[2] recent list (ids of the account's entries not yet persisted, lua/account.lua post())
-- KEYS[3] the shard's unpersisted-entries hash
-- KEYS[4] grants hash
-- KEYS[5] holds hash
-- KEYS[6] the account's auto top-up hash
-- KEYS[7] the account's tombstone set (engine.store.keys.tombstone_key)
-- ARGV[1] idle before: epoch ms; an account written or rebuilt since stays
-- ARGV[2] now, epoch ms
-- ARGV[3] the account's member in its tombstone set
--
-- Returns 1 when it evicted the account; 0 when it kept it (in use, an entry not in PostgreSQL
-- yet, a top-up running, an expiry due that the sweep has not written) or there was none.
--
-- The tombstone keeps the shard's complete marker true (lua/vouch_account.lua): every account
-- with ledger entries is in Redis or has one. It stays when the account comes back (a stale
-- one only makes Redis decline to vouch for that account while PostgreSQL is down, as it
-- would for an evicted one). An account without entries (seq 0) needs none: missing, it is
-- new. The account's member stays in the shard's expiry-due set, so its grants and holds
-- still expire on time (the sweep rebuilds it first, engine.holds.expiry), and in the
-- top-up-due set, whose job reads the balance through a rebuild. The auto top-up hash stays:
-- it is the user's settings (few users have them), which a deduct's script reads and the
-- worker puts back every few minutes anyway.

local s = redis.call('HMGET', KEYS[1], 'seq', 'updated_at', 'hydrated_at', 'due')
if not s[1] then
  return 0
end
if math.max(tonumber(s[2]) or 0, tonumber(s[3]) or 0) >= tonumber(ARGV[1]) then
  return 0
end
if s[4] and tonumber(s[4]) <= tonumber(ARGV[2]) then
  return 0
end
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if string.sub(id, 1, 1) == '{' then
    id = string.sub(id, 15, 50)  -- a whole entry, as the previous version listed them
  end
  if redis.call('HEXISTS', KEYS[3], id) == 1 then
    return 0
  end
end
if redis.call('HEXISTS', KEYS[6], 'pending') == 1 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5])
if s[1] ~= '0' then
  redis.call('SADD', KEYS[7], ARGV[3])
end
return 1

-- expire_due.lua: expire an account's grants and holds whose time has come, for accounts that
-- no request touches (every other script does this first, lua/account.lua).
-- Called by engine.holds.expiry for the accounts its shard's expiry-due set names.
--
-- KEYS[1..7] as apply_entry.lua
-- ARGV[1] now, epoch milliseconds
-- ARGV[2] a fresh ledger_id of the account's shard: the entries made here derive theirs from it
-- ARGV[3] `"app_id":...,"user_id":...` of the account, as JSON
-- ARGV[4] thresholds to watch, as apply_entry.lua ("" for none)
-- ARGV[5] "1": an account missing from Redis leaves the due set (the ledger has nothing to
--         rebuild it from); else it stays
--
-- Returns how many entries it wrote, or -1 for an account missing from Redis (evicted,
-- engine.ledger.eviction, or lost): the caller rebuilds it from the ledger, and it expires
-- what is due at the next sweep.

open('', ARGV[1], '', ARGV[2])
A.who = ARGV[3]
local st = state()
if not st then
  if ARGV[5] == '1' then
    redis.call('ZREM', A.due_set, member())
    return 0
  end
  return -1
end
if not st.due then
  redis.call('ZREM', A.due_set, member())
  return 0
end
A.st, A.before, A.watch = st, st.balance - st.held, ARGV[4]
lib().expire_due(st)
finish()
return extra

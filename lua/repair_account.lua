-- repair_account.lua: set a drifted account's balance to what its ledger says, unless the
-- account changed since the reconciliation read it. Called by engine.reconcile.
--
-- KEYS[1] account hash
-- ARGV[1] seq the reconciliation compared at
-- ARGV[2] balance the ledger holds at that seq
--
-- Returns 1 when repaired, 0 when the account moved on (or vanished) and must be checked again.

if redis.call('HGET', KEYS[1], 'seq') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'balance', ARGV[2])
return 1

-- apply_batch.lua: post many entries of one shard, in order, in one call: each exactly as its own
-- apply_entry.lua call would (lua/account.lua apply_entry()), all-or-nothing on its own, the
-- batch as a whole not. Called by engine.ledger.credits.Credits.batch, once per shard.
--
-- KEYS   each entry's keys in turn, as apply_entry.lua takes them (all in the shard's slot)
-- ARGV   for each entry in turn: how many KEYS it has, how many arguments, then those
--        arguments as apply_entry.lua's ARGV
--
-- Returns the entries' replies in order, each as apply_entry.lua's. An entry whose account is
-- missing answers {"missing"}, and so does every later entry on that account, whatever it is:
-- the caller rebuilds the account and sends them again, in their order; the other entries go on.

local replies, missing = {}, {}
local kb, ab = 0, 0
while ab < #ARGV do
  local keys, args = tonumber(ARGV[ab + 1]), tonumber(ARGV[ab + 2])
  local account = KEYS[kb + 1]
  local reply
  if missing[account] then
    reply = {'missing'}
  else
    fresh()
    reply = apply_entry(kb, ab + 2, ab + 2 + args)
    missing[account] = reply[1] == 'missing'
  end
  replies[#replies + 1] = reply
  kb, ab = kb + keys, ab + 2 + args
end
return replies

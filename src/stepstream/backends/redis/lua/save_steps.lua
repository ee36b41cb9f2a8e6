--!df flags=allow-undeclared-keys
-- ARGV: P, id, owner, epoch, slot key ('' for none), slot position, what a waiting step waits
-- for, batch, steps (n + pairs), emits. Saves the steps and appends the events; with a slot
-- key, then gives that flow control slot up like release_slot.lua. Returns {'OK', woken}.
local id = ARGV[2]
if not fenced(id, ARGV[3], ARGV[4]) then return {'LEASE'} end
emit_all(hset_pairs(steps_key(id), 9))
local woken = 0
if ARGV[5] ~= '' then
  woken = release_slot(ARGV[5], id .. '|' .. ARGV[6], '"waiting_for":' .. cjson.encode(ARGV[7]),
    tonumber(ARGV[8]))
end
return {'OK', woken}

--!df flags=allow-undeclared-keys
-- ARGV: P, id, owner, epoch, steps (n + pairs), emits.
local id = ARGV[2]
if not fenced(id, ARGV[3], ARGV[4]) then return {'LEASE'} end
emit_all(hset_pairs(steps_key(id), 5))
return {'OK'}

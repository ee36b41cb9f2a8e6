--!df flags=allow-undeclared-keys
-- ARGV: P, id, owner, epoch, state, result JSON, error JSON, now, the parent's step out, emits.
local id = ARGV[2]
if not fenced(id, ARGV[3], ARGV[4]) then return {'LEASE'} end
close(id, ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
emit_all(10)
return {'OK'}

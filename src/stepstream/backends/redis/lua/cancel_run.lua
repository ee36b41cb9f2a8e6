--!df flags=allow-undeclared-keys
-- ARGV: P, id, now, error JSON, the parent's step out, emits.
local id, now = ARGV[2], ARGV[3]
local state = redis.call('HGET', run_key(id), 'state')
if not state then return {'MISSING'} end
if state ~= 'RUN_STARTED' then return {'FINISHED', state} end
close(id, 'RUN_CANCELED', 'null', ARGV[4], now, ARGV[5])
emit_all(6)
return {'OK'}

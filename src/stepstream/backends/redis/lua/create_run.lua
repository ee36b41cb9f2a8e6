--!df flags=allow-undeclared-keys
-- ARGV: P, id, state, workflow, due_at|'', seq-less run fields (n + pairs), steps (n + pairs),
-- labels (n + names), emits.
local id, state, workflow, due = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = run_key(id)
if redis.call('EXISTS', key) == 1 then return {'EXISTS'} end
local seq = redis.call('INCR', P .. 'wf:seq')
local at = hset_pairs(key, 6)
redis.call('HSET', key, 'seq', seq, 'epoch', 0)
at = hset_pairs(steps_key(id), at)
local labels = tonumber(ARGV[at])
if labels > 0 then redis.call('SADD', labels_key(id), unpack(ARGV, at + 1, at + labels)) end
index_run(id, seq, state, workflow, true)
if state == 'RUN_STARTED' and due ~= '' then
  redis.call('ZADD', due_key(workflow), due, id)
end
emit_all(at + labels + 1)
return {'OK'}

--!df flags=allow-undeclared-keys
-- ARGV: P, id, first failure-function position, reset run fields (n + pairs), emits. Continues
-- a failed or canceled run in place: only its succeeded run steps are kept, it is due now and
-- unleased (its epoch kept, so no earlier claim holds it). Returns {'OK'}, {'MISSING'} or
-- {'REFUSED', state}.
local id, failure = ARGV[2], tonumber(ARGV[3])
local key = run_key(id)
local state, seq, workflow = unpack(redis.call('HMGET', key, 'state', 'seq', 'workflow'))
if not state then return {'MISSING'} end
if state ~= 'RUN_FAILED' and state ~= 'RUN_CANCELED' then return {'REFUSED', state} end
local steps = steps_key(id)
local all = redis.call('HGETALL', steps)
for i = 1, #all, 2 do
  if tonumber(all[i]) >= failure or not has(all[i + 1], '"state":"STEP_SUCCESS"') then
    redis.call('HDEL', steps, all[i])
  end
end
-- Only steps that did not succeed wait: every wait of the run goes with them.
drop_waits(id)
local at = hset_pairs(key, 4)
redis.call('HSET', key, 'state', 'RUN_STARTED')
redis.call('HDEL', key, 'completed_at', 'lease_owner', 'lease_until')
index_run(id, nil, state, workflow, false)
index_run(id, seq, 'RUN_STARTED', workflow, false)
make_due(id, now_ms())
emit_all(at)
return {'OK'}

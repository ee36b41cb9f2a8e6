--!df flags=allow-undeclared-keys
-- ARGV: P, id, the stream key of its channel. Deletes a finished run and everything kept for
-- it: its hash, steps, waits, lookback events, labels and listing index entries, and its
-- channel's history with the channel's meta (ids start afresh if the id is used again).
-- Returns {'OK'}, {'MISSING'} or {'REFUSED', state}.
local id, stream = ARGV[2], ARGV[3]
local key = run_key(id)
local state, workflow = unpack(redis.call('HMGET', key, 'state', 'workflow'))
if not state then return {'MISSING'} end
if state == 'RUN_STARTED' then return {'REFUSED', state} end
index_run(id, nil, state, workflow, true)
drop_waits(id)
redis.call('DEL', key, steps_key(id), labels_key(id), P .. 'wf:lookback:' .. id, stream,
  stream .. ':meta')
return {'OK'}

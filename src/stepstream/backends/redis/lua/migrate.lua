--!df flags=allow-undeclared-keys
-- ARGV: P, batch. Brings what an earlier key layout left up to this one, `batch` entries per
-- call: the shared queues wf:due / wf:leased become per workflow, and the state+workflow
-- listing index is built once (wf:layout = 2 when done). Returns how much it moved: call it
-- again until 0. Idempotent, and safe while other processes run.
local batch = tonumber(ARGV[2])
local moved = 0
for _, name in ipairs({'due', 'leased'}) do
  local old = P .. 'wf:' .. name
  local items = redis.call('ZRANGE', old, 0, batch - 1, 'WITHSCORES')
  for i = 1, #items, 2 do
    local workflow = redis.call('HGET', run_key(items[i]), 'workflow')
    if workflow then
      redis.call('ZADD', P .. 'wf:' .. name .. ':' .. workflow, items[i + 1], items[i])
    end
    redis.call('ZREM', old, items[i])
    moved = moved + 1
  end
end
if redis.call('GET', P .. 'wf:layout') ~= '2' then
  local from = redis.call('GET', P .. 'wf:layout:seq') or '0'
  local ids = redis.call('ZRANGEBYSCORE', P .. 'wf:runs', '(' .. from, '+inf', 'WITHSCORES',
    'LIMIT', 0, batch)
  for i = 1, #ids, 2 do
    local state, workflow = unpack(redis.call('HMGET', run_key(ids[i]), 'state', 'workflow'))
    if state and workflow then
      redis.call('ZADD', listing_key(state, workflow, ''), ids[i + 1], ids[i])
    end
    from = ids[i + 1]
    moved = moved + 1
  end
  if #ids == 0 then
    redis.call('SET', P .. 'wf:layout', '2')
    redis.call('DEL', P .. 'wf:layout:seq')
  else
    redis.call('SET', P .. 'wf:layout:seq', from)
  end
end
return moved

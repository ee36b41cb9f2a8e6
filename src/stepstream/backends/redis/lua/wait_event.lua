--!df flags=allow-undeclared-keys
-- ARGV: P, id, owner, epoch, position, event id, step JSON, emits.
local id, position, event = ARGV[2], ARGV[5], ARGV[6]
if not fenced(id, ARGV[3], ARGV[4]) then return {'LEASE'} end
local lookback = P .. 'wf:lookback:' .. id
local data = redis.call('HGET', lookback, event)
if data then
  -- Consumed and recorded in one step: a crash now cannot lose the event.
  redis.call('HDEL', lookback, event)
  redis.call('HSET', steps_key(id), position, resolved_step(ARGV[7], data))
else
  redis.call('HSET', steps_key(id), position, ARGV[7])
  redis.call('SADD', P .. 'wf:waits:' .. event, id .. '|' .. position)
  redis.call('SADD', P .. 'wf:waitsof:' .. id, position .. '|' .. event)
end
emit_all(8)
if data then return {'OK', data} end
return {'OK'}

--!df flags=allow-undeclared-keys
-- ARGV: P, event id, data, run id|''.
local event, data, only = ARGV[2], ARGV[3], ARGV[4]
if only ~= '' then
  local state = redis.call('HGET', run_key(only), 'state')
  if not state then return {'MISSING'} end
  if state ~= 'RUN_STARTED' then return {'FINISHED', state} end
end
local waits = P .. 'wf:waits:' .. event
local woken = 0
for _, member in ipairs(redis.call('SMEMBERS', waits)) do
  local id, position = string.match(member, '^(.*)|(%d+)$')
  if only == '' or id == only then
    redis.call('SREM', waits, member)
    redis.call('SREM', P .. 'wf:waitsof:' .. id, position .. '|' .. event)
    -- Past its deadline a wait has timed out (its worker records that): left alone.
    local text = redis.call('HGET', steps_key(id), position)
    local deadline = text and cjson.decode(text).wake_at
    if not (type(deadline) == 'number' and deadline <= now_ms()) then
      woken = woken + resolve(id, position, data)
    end
  end
end
if woken == 0 and only ~= '' then
  redis.call('HSET', P .. 'wf:lookback:' .. only, event, data)
end
return {'OK', woken}

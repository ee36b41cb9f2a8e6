--!df flags=allow-undeclared-keys
-- ARGV: P, event id. Returns {run id, position, step JSON} of each step waiting for the event
-- whose run is still started and which no notify has resolved yet (in no order: a set).
local found = {}
for _, member in ipairs(redis.call('SMEMBERS', P .. 'wf:waits:' .. ARGV[2])) do
  local id, position = string.match(member, '^(.*)|(%d+)$')
  local text = redis.call('HGET', steps_key(id), position)
  if unresolved(text) and redis.call('HGET', run_key(id), 'state') == 'RUN_STARTED' then
    found[#found + 1] = {id, position, text}
  end
end
return found

--!df flags=allow-undeclared-keys
-- ARGV: P, id, key, position, what a waiting step waits for, batch. Gives the slot up and wakes
-- the longest-waiting waiter of the key whose step still waits (resolved, its run due now);
-- waiters whose run moved on are dropped on the way, at most `batch` per call. Returns how
-- many runs it woke (0 or 1).
local key, waiting, batch = ARGV[3], '"waiting_for":' .. cjson.encode(ARGV[5]), tonumber(ARGV[6])
redis.call('HDEL', flow_key('slots', key), ARGV[2] .. '|' .. ARGV[4])
local waiters = flow_key('waiters', key)
for _, member in ipairs(redis.call('ZRANGE', waiters, 0, batch - 1)) do
  redis.call('ZREM', waiters, member)
  local id, position = string.match(member, '^(.*)|(%d+)$')
  local text = redis.call('HGET', steps_key(id), position)
  if unresolved(text) and has(text, waiting) then
    wake_step(id, position, set_field(text, 'resolved', 'true'))
    return 1
  end
end
return 0

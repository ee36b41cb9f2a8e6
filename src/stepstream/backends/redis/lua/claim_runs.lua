--!df flags=allow-undeclared-keys
-- ARGV: P, owner, lease ms, limit, n, n workflow names, then run ids to skip (the caller's
-- own executions). Due runs come from wf:due:<workflow>, runs whose lease expired from
-- wf:leased:<workflow>; all are merged oldest due first. Each claim bumps the run's epoch.
-- Returns {run hash, steps hash, takeovers} per run: a takeover (a lease expired) counts one
-- more than the run's last one if that left the run at this epoch and with as many steps
-- (records.next_takeovers), else 1; any other claim 0.
local owner, lease_ms, limit, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if limit < 1 then return {} end
local now = now_ms()
local skip, skipped = {}, 0
for i = 6 + n, #ARGV do skip[ARGV[i]] = true skipped = skipped + 1 end
local candidates = {}
for w = 6, 5 + n do
  local due = redis.call('ZRANGEBYSCORE', due_key(ARGV[w]), '-inf', now, 'WITHSCORES',
    'LIMIT', 0, limit + skipped)
  for i = 1, #due, 2 do
    if not skip[due[i]] then
      candidates[#candidates + 1] = {due[i], tonumber(due[i + 1]), ARGV[w]}
    end
  end
  local expired = redis.call('ZRANGEBYSCORE', leased_key(ARGV[w]), '-inf', '(' .. now,
    'LIMIT', 0, limit + skipped)
  for _, id in ipairs(expired) do
    local at = tonumber(redis.call('HGET', run_key(id), 'due_at'))
    if at and at <= now and not skip[id] then candidates[#candidates + 1] = {id, at, ARGV[w]} end
  end
end
table.sort(candidates, function(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[1] < b[1]
end)
local until_ = now + lease_ms
local claimed = {}
for i = 1, math.min(limit, #candidates) do
  local id, workflow = candidates[i][1], candidates[i][3]
  local key = run_key(id)
  local takeovers = 0
  if redis.call('HEXISTS', key, 'lease_owner') == 1 then
    local last = redis.call('HMGET', key, 'takeovers', 'takeover_epoch', 'takeover_steps', 'epoch')
    local epoch, steps = tonumber(last[4]) or 0, redis.call('HLEN', steps_key(id))
    takeovers = 1
    if tonumber(last[2]) == epoch and tonumber(last[3]) == steps then
      takeovers = (tonumber(last[1]) or 0) + 1
    end
    redis.call('HSET', key, 'takeovers', takeovers, 'takeover_epoch', epoch + 1,
      'takeover_steps', steps)
  end
  redis.call('ZREM', due_key(workflow), id)
  redis.call('ZADD', leased_key(workflow), until_, id)
  redis.call('HSET', key, 'lease_owner', owner, 'lease_until', until_)
  redis.call('HINCRBY', key, 'epoch', 1)
  claimed[#claimed + 1] = {redis.call('HGETALL', key), redis.call('HGETALL', steps_key(id)), takeovers}
end
return claimed

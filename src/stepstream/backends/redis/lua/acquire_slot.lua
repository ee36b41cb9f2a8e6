--!df flags=allow-undeclared-keys
-- ARGV: P, id, owner, epoch, key, parallelism|'', rate|'', period ms, position, step JSON.
-- Returns {'OK', 1} (granted), {'OK', 0, retry at (0: none)} or {'LEASE'}. Counting and taking
-- are one script, so two acquires of a key never both take its last slot.
local id, owner, epoch, key, position = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[9]
local parallelism, rate, period = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if not fenced(id, owner, epoch) then return {'LEASE'} end
local now = now_ms()
local holder = id .. '|' .. position
local slots, starts = flow_key('slots', key), flow_key('starts', key)
local waiters = flow_key('waiters', key)
-- A slot counts only while the claim that took it still holds its run, so a crashed worker's
-- slots come back when its lease ends, without anyone releasing them. This step's own slot
-- (a retry) never counts against it.
redis.call('HDEL', slots, holder)
local held, soonest = redis.call('HLEN', slots), nil
if parallelism and held >= parallelism then
  -- Full as counted: only now is it worth dropping the slots whose claim ended, so a key far
  -- below its limit costs O(1).
  held = 0
  local all = redis.call('HGETALL', slots)
  for i = 1, #all, 2 do
    local run = string.match(all[i], '^(.*)|%d+$')
    local state, lease, claim, until_ = unpack(
      redis.call('HMGET', run_key(run), 'state', 'lease_owner', 'epoch', 'lease_until'))
    until_ = tonumber(until_)
    if state == 'RUN_STARTED' and lease and until_ and until_ >= now
        and all[i + 1] == lease .. '|' .. (claim or '0') then
      held = held + 1
      if not soonest or until_ < soonest then soonest = until_ end
    else
      redis.call('HDEL', slots, all[i])
    end
  end
end
redis.call('ZREMRANGEBYSCORE', starts, '-inf', now - period)
local started = redis.call('ZCARD', starts)
local full = parallelism and held >= parallelism
local spent = rate and started >= rate
if not full and not spent then
  if parallelism then redis.call('HSET', slots, holder, owner .. '|' .. epoch) end
  if rate then
    redis.call('ZADD', starts, now, now .. '|' .. holder)
    -- Every start is out of the window `period` from now: an idle key leaves nothing behind.
    redis.call('PEXPIRE', starts, period)
  end
  redis.call('ZREM', waiters, holder)
  return {'OK', 1}
end
redis.call('HSET', steps_key(id), position, ARGV[10])
local retry_at = 0
if spent then
  local oldest = redis.call('ZRANGE', starts, 0, 0, 'WITHSCORES')
  if oldest[2] then retry_at = tonumber(oldest[2]) + period end
end
if full then
  redis.call('ZADD', waiters, 'NX', now, holder) -- an earlier registration keeps its place
  if soonest then retry_at = math.max(retry_at, soonest + 1) end
end
return {'OK', 0, retry_at}

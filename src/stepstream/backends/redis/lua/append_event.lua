-- append_event: store one event in a channel's stream and publish it, in one step, so
-- "stored" and "delivered" cannot disagree after a crash and publish order is id order.
-- Every script that appends starts with this function (scripts.py puts it there).
local function append_event(key, meta, event, raw, maxlen, ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local id = '*'
  if redis.call('EXISTS', key) == 0 then
    local last = redis.call('HGET', meta, 'last')
    if last then
      -- The stream expired: everything up to `last` is gone, and ids must keep increasing.
      redis.call('HSET', meta, 'trimmed', last)
      local dash = string.find(last, '-', 1, true)
      local ms = tonumber(string.sub(last, 1, dash - 1))
      if now <= ms then
        id = string.sub(last, 1, dash - 1) .. '-' .. (tonumber(string.sub(last, dash + 1)) + 1)
      end
    end
  end
  id = redis.call('XADD', key, id, 'e', event, 'd', raw)
  if maxlen > 0 then
    local len = redis.call('XLEN', key)
    if len > maxlen then
      local old = redis.call('XRANGE', key, '-', '+', 'COUNT', len - maxlen)
      redis.call('XTRIM', key, 'MAXLEN', maxlen)
      redis.call('HSET', meta, 'trimmed', old[#old][1])
    end
  end
  redis.call('HSET', meta, 'last', id)
  if ttl > 0 then
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', meta, ttl + 86400000)
  end
  redis.call('PUBLISH', key, id .. '\n' .. event .. '\n' .. raw)
  return id
end

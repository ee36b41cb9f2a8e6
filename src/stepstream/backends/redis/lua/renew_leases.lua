--!df flags=allow-undeclared-keys
-- ARGV: P, lease ms, then (run id, owner, epoch) triples.
local until_ = now_ms() + tonumber(ARGV[2])
local held = {}
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  if fenced(id, ARGV[i + 1], ARGV[i + 2]) then
    redis.call('HSET', run_key(id), 'lease_until', until_)
    redis.call('ZADD', leased_key(redis.call('HGET', run_key(id), 'workflow')), until_, id)
    held[#held + 1] = id
  end
end
return held

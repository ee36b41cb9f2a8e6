--!df flags=allow-undeclared-keys
-- ARGV: P, id, owner, epoch, due_at|'', hold (1|0), patch (n + pairs of 'm.<field>', JSON),
-- emits.
local id, due = ARGV[2], ARGV[5]
if not fenced(id, ARGV[3], ARGV[4]) then return {'LEASE'} end
local key = run_key(id)
-- A notify or a finished child may have resolved a step while we held the run: then it is due
-- now, whatever we planned (unless it is parked: `hold`).
if ARGV[6] ~= '1' then
  for _, text in ipairs(redis.call('HVALS', steps_key(id))) do
    if has(text, '"resolved":true') and in_progress(text) then due = now_ms() break end
  end
end
local at = hset_pairs(key, 7)
local workflow = redis.call('HGET', key, 'workflow')
redis.call('HDEL', key, 'lease_owner', 'lease_until')
redis.call('ZREM', leased_key(workflow), id)
if due == '' then
  redis.call('HDEL', key, 'due_at')
  redis.call('ZREM', due_key(workflow), id)
else
  make_due(id, due)
end
emit_all(at)
return {'OK'}

--!df flags=allow-undeclared-keys
-- ARGV: P, state|'', workflow|'', cursor|'', count. Returns run hashes, newest first, one more
-- than `count` when there are more. Every filter combination has its own index: the work is
-- bounded by `count`, whatever the filters match.
local state, workflow, count = ARGV[2], ARGV[3], tonumber(ARGV[5])
local index = P .. 'wf:runs'
if state ~= '' and workflow ~= '' then
  index = P .. 'wf:runs:sw:' .. state .. ':' .. workflow
elseif state ~= '' then
  index = P .. 'wf:runs:state:' .. state
elseif workflow ~= '' then
  index = P .. 'wf:runs:workflow:' .. workflow
end
local high = ARGV[4] == '' and '+inf' or '(' .. ARGV[4]
local found = {}
for _, id in ipairs(redis.call('ZREVRANGEBYSCORE', index, high, '-inf', 'LIMIT', 0, count + 1)) do
  found[#found + 1] = redis.call('HGETALL', run_key(id))
end
return found

--!df flags=allow-undeclared-keys
-- ARGV: P, state|'', workflow|'', label|'', created after|'', created before|'', cursor|'',
-- count. Returns {cursor|'', run hashes}: at most `count` runs newest first, and the seq to
-- continue after when there are more.
--
-- Every filter combination has its own index (`listing_key`), by seq. Runs get their seq as
-- they are created, so created_at falls along an index newest first (up to the clock skew of
-- the processes that trigger runs): the time bounds are ranks found by bisection, O(log n)
-- lookups, and the scan between them checks each run's created_at (a run created out of order
-- inside the range is skipped, one just outside it is not found). The work is bounded by
-- `count` whatever the filters match.
local state, workflow, label, cursor = ARGV[2], ARGV[3], ARGV[4], ARGV[7]
local after, before, count = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[8])
local index = listing_key(state, workflow, label)

local function created(id)
  return tonumber(redis.call('HGET', run_key(id), 'created_at')) or 0
end

-- The first rank in [lo, hi) (newest first) of a run created at or before `at`, or hi.
local function first_by(at, lo, hi)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if created(redis.call('ZREVRANGE', index, mid, mid)[1]) <= at then
      hi = mid
    else
      lo = mid + 1
    end
  end
  return lo
end

local rank = 0
if cursor ~= '' then rank = redis.call('ZCOUNT', index, cursor, '+inf') end
local stop = nil
if after or before then
  local n = redis.call('ZCARD', index)
  if before then rank = first_by(before - 1, rank, n) end
  stop = after and first_by(after, rank, n) or n
end

local found, last = {}, ''
while #found <= count and (not stop or rank < stop) do
  local want = count + 1 - #found
  if stop then want = math.min(want, stop - rank) end
  local chunk = redis.call('ZREVRANGE', index, rank, rank + want - 1, 'WITHSCORES')
  for i = 1, #chunk, 2 do
    local id = chunk[i]
    local at = (after or before) and created(id)
    if not at or ((not after or at > after) and (not before or at < before)) then
      if #found == count then return {last, found} end
      found[#found + 1] = redis.call('HGETALL', run_key(id))
      last = chunk[i + 1]
    end
  end
  if #chunk < 2 * want then break end
  rank = rank + want
end
return {'', found}

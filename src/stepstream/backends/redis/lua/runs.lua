-- The library of the run scripts, after append_event.lua and before each script's body.
-- ARGV[1] is always the key prefix P.
local P = ARGV[1]

local function run_key(id) return P .. 'wf:run:' .. id end
local function steps_key(id) return P .. 'wf:steps:' .. id end
local function due_key(workflow) return P .. 'wf:due:' .. workflow end
local function leased_key(workflow) return P .. 'wf:leased:' .. workflow end
local function labels_key(id) return P .. 'wf:labels:' .. id end

-- The listing index of the runs matching a filter ('' = any), by seq. A label's length goes
-- before it where a workflow name follows, so no two filters share a key whatever the names
-- contain (a state never contains ':').
local function listing_key(state, workflow, label)
  if label ~= '' then
    local sized = #label .. ':' .. label
    if state ~= '' and workflow ~= '' then
      return P .. 'wf:runs:lsw:' .. state .. ':' .. sized .. ':' .. workflow
    elseif state ~= '' then
      return P .. 'wf:runs:ls:' .. state .. ':' .. label
    elseif workflow ~= '' then
      return P .. 'wf:runs:lw:' .. sized .. ':' .. workflow
    end
    return P .. 'wf:runs:label:' .. label
  end
  if state ~= '' and workflow ~= '' then
    return P .. 'wf:runs:sw:' .. state .. ':' .. workflow
  elseif state ~= '' then
    return P .. 'wf:runs:state:' .. state
  elseif workflow ~= '' then
    return P .. 'wf:runs:workflow:' .. workflow
  end
  return P .. 'wf:runs'
end

-- Add (seq given) or remove (seq nil) run `id` in every listing index of `state`: by state
-- alone and with its workflow, each also per label of the run; with `any_state`, also those
-- that filter by no state (the run's place there never changes until it is deleted).
local function index_run(id, seq, state, workflow, any_state)
  local labels = redis.call('SMEMBERS', labels_key(id))
  labels[#labels + 1] = ''
  local states = any_state and {state, ''} or {state}
  for _, s in ipairs(states) do
    for _, w in ipairs({workflow, ''}) do
      for _, label in ipairs(labels) do
        if seq then
          redis.call('ZADD', listing_key(s, w, label), seq, id)
        else
          redis.call('ZREM', listing_key(s, w, label), id)
        end
      end
    end
  end
end

-- Flow control of a key: `part` is 'slots', 'starts' or 'waiters' (see flow.py).
local function flow_key(part, key) return P .. 'wf:flow:' .. part .. ':' .. key end

-- Leases and due times are judged by Redis's clock, never a worker's.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- ARGV[from], ARGV[from + 1]: max length and ttl; then (stream key, event, json) triples.
local function emit_all(from)
  local maxlen, ttl = tonumber(ARGV[from]), tonumber(ARGV[from + 1])
  for i = from + 2, #ARGV, 3 do
    append_event(ARGV[i], ARGV[i] .. ':meta', ARGV[i + 1], ARGV[i + 2], maxlen, ttl)
  end
end

-- ARGV[at] = n, then n (field, value) pairs: HSET them into `key`; returns the next index.
local function hset_pairs(key, at)
  local n = tonumber(ARGV[at])
  for i = at + 1, at + 2 * n, 2 do
    redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  end
  return at + 2 * n + 1
end

local function fenced(id, owner, epoch)
  local state, lease, held = unpack(
    redis.call('HMGET', run_key(id), 'state', 'lease_owner', 'epoch'))
  return state == 'RUN_STARTED' and lease == owner and (held or '0') == epoch
end

-- Step records are JSON written by Python (records.StepRecord.to_json). Scripts never decode
-- them: a decoder can refuse text (cjson and lone surrogates) half way through a script, after
-- it has written. They are edited as text instead. A field's `"name":` can only occur once,
-- structurally: inside a JSON string every quote is escaped.
local function has(text, literal) return string.find(text, literal, 1, true) ~= nil end

local function set_field(text, name, value)
  return (string.gsub(text, '"' .. name .. '":[^,}]*', function()
    return '"' .. name .. '":' .. value
  end, 1))
end

local function in_progress(text) return has(text, '"state":"STEP_PROGRESS"') end

local function make_due(id, at)
  local key = run_key(id)
  redis.call('HSET', key, 'due_at', at)
  if not redis.call('HGET', key, 'lease_owner') then
    redis.call('ZADD', due_key(redis.call('HGET', key, 'workflow')), at, id)
  end
  -- A leased run stays with its worker; release_run sees the resolved step.
end

-- The step's text with `out` set to the JSON text `out` and `resolved` true.
local function resolved_step(text, out)
  return set_field(set_field(text, 'out', cjson.encode(out)), 'resolved', 'true')
end

-- Whether a step's text (false: no such step) is in progress and not resolved yet.
local function unresolved(text)
  return text and in_progress(text) and not has(text, '"resolved":true')
end

-- Store the step's resolved text; its run becomes due now (its worker completes the step).
local function wake_step(id, position, text)
  redis.call('HSET', steps_key(id), position, text)
  if redis.call('HGET', run_key(id), 'state') == 'RUN_STARTED' then
    make_due(id, now_ms())
  end
end

-- A notify or a finished child writes a step's `out` while it is still in progress.
local function resolve(id, position, out)
  local text = redis.call('HGET', steps_key(id), position)
  if not unresolved(text) then return 0 end
  wake_step(id, position, resolved_step(text, out))
  return 1
end

-- Give up slot `holder` ("<id>|<position>") of flow control key `key` and wake the longest
-- waiter whose step still waits for `waiting` (a '"waiting_for":"..."' literal): its step
-- resolved, its run due now. Waiters whose run moved on are dropped on the way, at most
-- `batch`. Returns how many runs it woke (0 or 1).
local function release_slot(key, holder, waiting, batch)
  redis.call('HDEL', flow_key('slots', key), holder)
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
end

-- Forget every step of run `id` waiting for an event.
local function drop_waits(id)
  local waits = P .. 'wf:waitsof:' .. id
  for _, member in ipairs(redis.call('SMEMBERS', waits)) do
    local at, event = string.match(member, '^(%d+)|(.*)$')
    redis.call('SREM', P .. 'wf:waits:' .. event, id .. '|' .. at)
  end
  redis.call('DEL', waits)
end

local function close(id, state, result, err, now, outcome)
  local key = run_key(id)
  local old, seq, parent, position, workflow = unpack(
    redis.call('HMGET', key, 'state', 'seq', 'parent', 'm.parent_position', 'workflow'))
  redis.call('HSET', key, 'state', state, 'completed_at', now, 'm.result', result, 'm.error', err)
  redis.call('HDEL', key, 'due_at', 'lease_owner', 'lease_until')
  redis.call('ZREM', due_key(workflow), id)
  redis.call('ZREM', leased_key(workflow), id)
  index_run(id, nil, old, workflow, false)
  index_run(id, seq, state, workflow, false)
  drop_waits(id)
  redis.call('DEL', P .. 'wf:lookback:' .. id)
  do -- a finished run leaves no step in progress (canceled, timed out, abandoned)
    local steps = steps_key(id)
    local all = redis.call('HGETALL', steps)
    for i = 1, #all, 2 do
      local text = all[i + 1]
      local changed = string.gsub(text, '"state":"STEP_PROGRESS"', '"state":"STEP_CANCELED"', 1)
      changed = string.gsub(changed, '"state":"STEP_RETRY"', '"state":"STEP_CANCELED"', 1)
      if changed ~= text then
        redis.call('HSET', steps, all[i], set_field(changed, 'finished_at', now))
      end
    end
  end
  if parent and position and position ~= 'null' then
    resolve(parent, position, outcome)
  end
end

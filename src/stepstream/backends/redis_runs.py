"""The workflow half of the Redis backend: one Lua script per state change, and the codecs that
turn Redis replies into records (``redis.py`` holds the client and the protocol methods).

Every script is ``APPEND_EVENT`` (``redis.py``) + ``LIB`` + its body, run with ``ARGV[1]`` = the
key prefix. A script checks everything first (fencing, existence, state), then writes the
change and appends its events, so a rejected call leaves no trace and an accepted one is
stored together with the events that report it. A script returns ``{status, ...}``:
``OK``, ``LEASE`` (fenced out), ``MISSING`` (no such run), ``EXISTS`` (id taken) or
``FINISHED`` followed by the run's state.

Scripts decode no JSON: step records are edited as text (``set_field``), so no decoder can
refuse stored data half way through a script, and numbers keep the form Python wrote them in
(cjson would print ``1.7955e+12`` for an epoch-ms time). Everything Python sends is written by
``records.dumps``, which never produces an escape a strict parser rejects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from stepstream.records import HistoryPolicy, RunRecord, RunState, StepRecord, dumps

# Scripts compute most keys they touch (a run's keys from its id), so they cannot declare them
# all in KEYS; Redis allows that, Dragonfly needs the script to say so (a comment to Redis).
FLAGS = "--!df flags=allow-undeclared-keys\n"

LIB = """
local P = ARGV[1]

local function run_key(id) return P .. 'wf:run:' .. id end
local function steps_key(id) return P .. 'wf:steps:' .. id end
local function due_key(workflow) return P .. 'wf:due:' .. workflow end
local function leased_key(workflow) return P .. 'wf:leased:' .. workflow end

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

-- A notify or a finished child writes a step's `out` while it is still in progress.
local function resolve(id, position, out)
  local key = steps_key(id)
  local text = redis.call('HGET', key, position)
  if not text or not in_progress(text) or has(text, '"resolved":true') then return 0 end
  redis.call('HSET', key, position, resolved_step(text, out))
  if redis.call('HGET', run_key(id), 'state') == 'RUN_STARTED' then
    make_due(id, now_ms())
  end
  return 1
end

local function close(id, state, result, err, now, outcome)
  local key = run_key(id)
  local old, seq, parent, position, workflow = unpack(
    redis.call('HMGET', key, 'state', 'seq', 'parent', 'm.parent_position', 'workflow'))
  redis.call('HSET', key, 'state', state, 'completed_at', now, 'm.result', result, 'm.error', err)
  redis.call('HDEL', key, 'due_at', 'lease_owner', 'lease_until')
  redis.call('ZREM', due_key(workflow), id)
  redis.call('ZREM', leased_key(workflow), id)
  redis.call('ZREM', P .. 'wf:runs:state:' .. old, id)
  redis.call('ZREM', P .. 'wf:runs:sw:' .. old .. ':' .. workflow, id)
  redis.call('ZADD', P .. 'wf:runs:state:' .. state, seq, id)
  redis.call('ZADD', P .. 'wf:runs:sw:' .. state .. ':' .. workflow, seq, id)
  local waits = P .. 'wf:waitsof:' .. id
  for _, member in ipairs(redis.call('SMEMBERS', waits)) do
    local at, event = string.match(member, '^(%d+)|(.*)$')
    redis.call('SREM', P .. 'wf:waits:' .. event, id .. '|' .. at)
  end
  redis.call('DEL', waits, P .. 'wf:lookback:' .. id)
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
"""

# ARGV: P, id, state, workflow, due_at|'', seq-less run fields (n + pairs), steps (n + pairs),
# emits.
CREATE_RUN = """
local id, state, workflow, due = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = run_key(id)
if redis.call('EXISTS', key) == 1 then return {'EXISTS'} end
local seq = redis.call('INCR', P .. 'wf:seq')
local at = hset_pairs(key, 6)
redis.call('HSET', key, 'seq', seq, 'epoch', 0)
at = hset_pairs(steps_key(id), at)
redis.call('ZADD', P .. 'wf:runs', seq, id)
redis.call('ZADD', P .. 'wf:runs:state:' .. state, seq, id)
redis.call('ZADD', P .. 'wf:runs:workflow:' .. workflow, seq, id)
redis.call('ZADD', P .. 'wf:runs:sw:' .. state .. ':' .. workflow, seq, id)
if state == 'RUN_STARTED' and due ~= '' then
  redis.call('ZADD', due_key(workflow), due, id)
end
emit_all(at)
return {'OK'}
"""

# ARGV: P, state|'', workflow|'', cursor|'', count. Returns run hashes, newest first, one more
# than `count` when there are more. Every filter combination has its own index: the work is
# bounded by `count`, whatever the filters match.
LIST_RUNS = """
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
"""

# ARGV: P, owner, lease ms, limit, n, n workflow names, then run ids to skip (the caller's
# own executions). Due runs come from wf:due:<workflow>, runs whose lease expired from
# wf:leased:<workflow>; all are merged oldest due first. Each claim bumps the run's epoch.
CLAIM_RUNS = """
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
  redis.call('ZREM', due_key(workflow), id)
  redis.call('ZADD', leased_key(workflow), until_, id)
  redis.call('HSET', run_key(id), 'lease_owner', owner, 'lease_until', until_)
  redis.call('HINCRBY', run_key(id), 'epoch', 1)
  claimed[#claimed + 1] = {redis.call('HGETALL', run_key(id)), redis.call('HGETALL', steps_key(id))}
end
return claimed
"""

# ARGV: P, lease ms, then (run id, owner, epoch) triples.
RENEW_LEASES = """
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
"""

# ARGV: P, id, owner, epoch, steps (n + pairs), emits.
SAVE_STEPS = """
local id = ARGV[2]
if not fenced(id, ARGV[3], ARGV[4]) then return {'LEASE'} end
emit_all(hset_pairs(steps_key(id), 5))
return {'OK'}
"""

# ARGV: P, id, owner, epoch, due_at|'', hold (1|0), patch (n + pairs of 'm.<field>', JSON),
# emits.
RELEASE_RUN = """
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
"""

# ARGV: P, id, owner, epoch, state, result JSON, error JSON, now, the parent's step out, emits.
FINISH_RUN = """
local id = ARGV[2]
if not fenced(id, ARGV[3], ARGV[4]) then return {'LEASE'} end
close(id, ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
emit_all(10)
return {'OK'}
"""

# ARGV: P, id, owner, epoch, position, event id, step JSON, emits.
WAIT_EVENT = """
local id, position, event = ARGV[2], ARGV[5], ARGV[6]
if not fenced(id, ARGV[3], ARGV[4]) then return {'LEASE'} end
local lookback = P .. 'wf:lookback:' .. id
local data = redis.call('HGET', lookback, event)
if data then
  -- Consumed and recorded in one step: a crash now cannot lose the event.
  redis.call('HDEL', lookback, event)
  redis.call('HSET', steps_key(id), position, resolved_step(ARGV[7], data))
else
  redis.call('HSET', steps_key(id), position, ARGV[7])
  redis.call('SADD', P .. 'wf:waits:' .. event, id .. '|' .. position)
  redis.call('SADD', P .. 'wf:waitsof:' .. id, position .. '|' .. event)
end
emit_all(8)
if data then return {'OK', data} end
return {'OK'}
"""

# ARGV: P, event id, data, run id|''.
NOTIFY = """
local event, data, only = ARGV[2], ARGV[3], ARGV[4]
if only ~= '' then
  local state = redis.call('HGET', run_key(only), 'state')
  if not state then return {'MISSING'} end
  if state ~= 'RUN_STARTED' then return {'FINISHED', state} end
end
local waits = P .. 'wf:waits:' .. event
local woken = 0
for _, member in ipairs(redis.call('SMEMBERS', waits)) do
  local id, position = string.match(member, '^(.*)|(%d+)$')
  if only == '' or id == only then
    redis.call('SREM', waits, member)
    redis.call('SREM', P .. 'wf:waitsof:' .. id, position .. '|' .. event)
    woken = woken + resolve(id, position, data)
  end
end
if woken == 0 and only ~= '' then
  redis.call('HSET', P .. 'wf:lookback:' .. only, event, data)
end
return {'OK', woken}
"""

# ARGV: P, id, now, error JSON, the parent's step out, emits.
CANCEL_RUN = """
local id, now = ARGV[2], ARGV[3]
local state = redis.call('HGET', run_key(id), 'state')
if not state then return {'MISSING'} end
if state ~= 'RUN_STARTED' then return {'FINISHED', state} end
close(id, 'RUN_CANCELED', 'null', ARGV[4], now, ARGV[5])
emit_all(6)
return {'OK'}
"""

# ARGV: P, batch. Brings what an earlier key layout left up to this one, `batch` entries per
# call: the shared queues wf:due / wf:leased become per workflow, and the state+workflow
# listing index is built once (wf:layout = 2 when done). Returns how much it moved: call it
# again until 0. Idempotent, and safe while other processes run.
MIGRATE = """
local batch = tonumber(ARGV[2])
local moved = 0
for _, name in ipairs({'due', 'leased'}) do
  local old = P .. 'wf:' .. name
  local items = redis.call('ZRANGE', old, 0, batch - 1, 'WITHSCORES')
  for i = 1, #items, 2 do
    local workflow = redis.call('HGET', run_key(items[i]), 'workflow')
    if workflow then
      redis.call('ZADD', P .. 'wf:' .. name .. ':' .. workflow, items[i + 1], items[i])
    end
    redis.call('ZREM', old, items[i])
    moved = moved + 1
  end
end
if redis.call('GET', P .. 'wf:layout') ~= '2' then
  local from = redis.call('GET', P .. 'wf:layout:seq') or '0'
  local ids = redis.call('ZRANGEBYSCORE', P .. 'wf:runs', '(' .. from, '+inf', 'WITHSCORES',
    'LIMIT', 0, batch)
  for i = 1, #ids, 2 do
    local state, workflow = unpack(redis.call('HMGET', run_key(ids[i]), 'state', 'workflow'))
    if state and workflow then
      redis.call('ZADD', P .. 'wf:runs:sw:' .. state .. ':' .. workflow, ids[i + 1], ids[i])
    end
    from = ids[i + 1]
    moved = moved + 1
  end
  if #ids == 0 then
    redis.call('SET', P .. 'wf:layout', '2')
    redis.call('DEL', P .. 'wf:layout:seq')
  else
    redis.call('SET', P .. 'wf:layout:seq', from)
  end
end
return moved
"""

SCRIPTS = {
    "migrate": MIGRATE,
    "create_run": CREATE_RUN,
    "list_runs": LIST_RUNS,
    "claim_runs": CLAIM_RUNS,
    "renew_leases": RENEW_LEASES,
    "save_steps": SAVE_STEPS,
    "release_run": RELEASE_RUN,
    "finish_run": FINISH_RUN,
    "wait_event": WAIT_EVENT,
    "notify": NOTIFY,
    "cancel_run": CANCEL_RUN,
}

META_PREFIX = "m."


def counted(pairs: Mapping[str, str]) -> list[str]:
    """``{"a": "1"}`` → ``["1", "a", "1"]``: a count, then the flattened pairs (``hset_pairs``)."""
    flat = [str(len(pairs))]
    for key, value in pairs.items():
        flat += [key, value]
    return flat


def steps_args(steps: Sequence[StepRecord]) -> list[str]:
    return counted({str(step.position): step.to_json() for step in steps})


def run_fields(run: RunRecord) -> dict[str, str]:
    """The run's hash, without ``seq`` and the lease; each meta field is stored as JSON under
    ``m.<name>`` so a patch is a plain ``HSET`` and Lua never re-encodes it."""
    fields = {
        "id": run.id,
        "workflow": run.workflow,
        "state": run.state.value,
        "created_at": str(run.created_at),
    }
    for name, value in (
        ("completed_at", run.completed_at),
        ("due_at", run.due_at),
        ("parent", run.parent),
    ):
        if value is not None:
            fields[name] = str(value)
    fields.update(meta_fields(json.loads(run.meta_json())))
    return fields


def meta_fields(meta: Mapping[str, Any]) -> dict[str, str]:
    return {META_PREFIX + name: _dumps(value) for name, value in meta.items()}


def run_record(flat: Sequence[str] | Mapping[str, str], steps: Any = None) -> RunRecord:
    """A run from its hash (a mapping, or HGETALL's flat list inside a script reply)."""
    fields = flat if isinstance(flat, Mapping) else _pairs(flat)
    meta = {
        name[len(META_PREFIX) :]: json.loads(value)
        for name, value in fields.items()
        if name.startswith(META_PREFIX)
    }
    run = RunRecord(
        id=fields["id"],
        workflow=fields["workflow"],
        state=RunState(fields["state"]),
        created_at=int(fields["created_at"]),
        completed_at=_int(fields.get("completed_at")),
        due_at=_int(fields.get("due_at")),
        lease_owner=fields.get("lease_owner"),
        lease_until=_int(fields.get("lease_until")),
        parent=fields.get("parent"),
        epoch=int(fields.get("epoch", 0)),
        **meta,
    )
    if steps is not None:
        by_position = steps if isinstance(steps, Mapping) else _pairs(steps)
        run.steps = [
            StepRecord.from_json(by_position[position]) for position in sorted(by_position, key=int)
        ]
    return run


def seq_of(flat: Sequence[str]) -> str:
    """The listing cursor of a run: its ``seq``, from HGETALL's flat list."""
    return _pairs(flat)["seq"]


def child_outcome(state: str, result: str | None, error: str | None) -> str:
    """The ``out`` of a parent's invoke step when its child ends (as ``sqlite_runs`` writes it)."""
    return dumps({"state": state, "result": result, "error": error})


def emit_args(keyed: Sequence[tuple[str, str, str]], policy: HistoryPolicy) -> list[str | int]:
    """``emit_all``'s arguments: trimming, then (stream key, event, JSON) triples."""
    ttl = 0 if policy.expire_after is None else max(1, int(policy.expire_after * 1000))
    args: list[str | int] = [policy.max_length or 0, ttl]
    for triple in keyed:
        args.extend(triple)
    return args


def _dumps(value: Any) -> str:
    return dumps(value)


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)

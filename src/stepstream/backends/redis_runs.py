"""The workflow half of the Redis backend: one Lua script per state change, and the codecs that
turn Redis replies into records (``redis.py`` holds the client and the protocol methods).

Every script is ``APPEND_EVENT`` (``redis.py``) + ``LIB`` + its body, run with ``ARGV[1]`` = the
key prefix. A script checks everything first (fencing, existence, state), then writes the
change and appends its events, so a rejected call leaves no trace and an accepted one is
stored together with the events that report it. A script returns ``{status, ...}``:
``OK``, ``LEASE`` (fenced out), ``MISSING`` (no such run), ``EXISTS`` (id taken) or
``FINISHED`` followed by the run's state.

Run fields holding JSON are edited in Lua only through ``encode_object``, which writes integral
numbers as integers: cjson alone would print ``1.7955e+12`` for an epoch-ms time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from stepstream.backends.base import HistoryPolicy
from stepstream.workflow.records import RunRecord, RunState, StepRecord

LIB = """
local P = ARGV[1]

local function run_key(id) return P .. 'wf:run:' .. id end
local function steps_key(id) return P .. 'wf:steps:' .. id end

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

local function fenced(id, owner)
  local state, lease = unpack(redis.call('HMGET', run_key(id), 'state', 'lease_owner'))
  return state == 'RUN_STARTED' and lease == owner
end

local function encode_value(v)
  if v == cjson.null then return 'null' end
  local kind = type(v)
  if kind == 'number' then
    if v == math.floor(v) and math.abs(v) < 9007199254740992 then
      return string.format('%.0f', v)
    end
    return string.format('%.17g', v)
  elseif kind == 'boolean' then
    return tostring(v)
  end
  return cjson.encode(v)
end

-- A flat JSON object (a StepRecord), with integers kept integers.
local function encode_object(object)
  local parts = {}
  for k, v in pairs(object) do
    parts[#parts + 1] = cjson.encode(k) .. ':' .. encode_value(v)
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

local function make_due(id, at)
  local key = run_key(id)
  redis.call('HSET', key, 'due_at', at)
  if not redis.call('HGET', key, 'lease_owner') then
    redis.call('ZADD', P .. 'wf:due', at, id)
  end
  -- A leased run stays with its worker; release_run sees the resolved step.
end

-- A notify or a finished child writes a step's `out` while it is still in progress.
local function resolve(id, position, out, now)
  local key = steps_key(id)
  local text = redis.call('HGET', key, position)
  if not text then return 0 end
  local step = cjson.decode(text)
  if step.state ~= 'STEP_PROGRESS' or step.resolved == true then return 0 end
  step.out, step.resolved = out, true
  redis.call('HSET', key, position, encode_object(step))
  if redis.call('HGET', run_key(id), 'state') == 'RUN_STARTED' then
    make_due(id, now)
  end
  return 1
end

local function close(id, state, result, err, now, outcome)
  local key = run_key(id)
  local old, seq, parent, position = unpack(
    redis.call('HMGET', key, 'state', 'seq', 'parent', 'm.parent_position'))
  redis.call('HSET', key, 'state', state, 'completed_at', now, 'm.result', result, 'm.error', err)
  redis.call('HDEL', key, 'due_at', 'lease_owner', 'lease_until')
  redis.call('ZREM', P .. 'wf:due', id)
  redis.call('ZREM', P .. 'wf:leased', id)
  redis.call('ZREM', P .. 'wf:runs:state:' .. old, id)
  redis.call('ZADD', P .. 'wf:runs:state:' .. state, seq, id)
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
      local step = cjson.decode(all[i + 1])
      if step.state == 'STEP_PROGRESS' or step.state == 'STEP_RETRY' then
        step.state, step.finished_at = 'STEP_CANCELED', tonumber(now)
        redis.call('HSET', steps, all[i], encode_object(step))
      end
    end
  end
  if parent and position and position ~= 'null' then
    resolve(parent, position, outcome, now)
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
redis.call('HSET', key, 'seq', seq)
at = hset_pairs(steps_key(id), at)
redis.call('ZADD', P .. 'wf:runs', seq, id)
redis.call('ZADD', P .. 'wf:runs:state:' .. state, seq, id)
redis.call('ZADD', P .. 'wf:runs:workflow:' .. workflow, seq, id)
if state == 'RUN_STARTED' and due ~= '' then
  redis.call('ZADD', P .. 'wf:due', due, id)
end
emit_all(at)
return {'OK'}
"""

# ARGV: P, state|'', workflow|'', cursor|'', count. Returns {seq, run hash} pairs, newest first,
# one more than `count` when there are more.
LIST_RUNS = """
local state, workflow, count = ARGV[2], ARGV[3], tonumber(ARGV[5])
local index = P .. 'wf:runs'
if state ~= '' then
  index = P .. 'wf:runs:state:' .. state
elseif workflow ~= '' then
  index = P .. 'wf:runs:workflow:' .. workflow
end
local check = state ~= '' and workflow ~= ''
local high = ARGV[4] == '' and '+inf' or '(' .. ARGV[4]
local found = {}
while #found <= count do
  local batch = redis.call('ZREVRANGEBYSCORE', index, high, '-inf', 'WITHSCORES', 'LIMIT', 0, 100)
  if #batch == 0 then break end
  for i = 1, #batch, 2 do
    high = '(' .. batch[i + 1]
    local key = run_key(batch[i])
    if not check or redis.call('HGET', key, 'workflow') == workflow then
      found[#found + 1] = redis.call('HGETALL', key)
      if #found > count then break end
    end
  end
end
return found
"""

# ARGV: P, owner, now, lease_until, limit. Due runs come from wf:due, runs whose lease expired
# from wf:leased; both kinds are merged oldest due first.
CLAIM_RUNS = """
local owner, now, until_, limit = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
if limit < 1 then return {} end
local due_key, leased_key = P .. 'wf:due', P .. 'wf:leased'
local candidates = {}
local due = redis.call('ZRANGEBYSCORE', due_key, '-inf', ARGV[3], 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do
  candidates[#candidates + 1] = {due[i], tonumber(due[i + 1])}
end
local expired = redis.call('ZRANGEBYSCORE', leased_key, '-inf', '(' .. ARGV[3], 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local at = tonumber(redis.call('HGET', run_key(id), 'due_at'))
  if at and at <= now then candidates[#candidates + 1] = {id, at} end
end
table.sort(candidates, function(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[1] < b[1]
end)
local claimed = {}
for i = 1, math.min(limit, #candidates) do
  local id = candidates[i][1]
  redis.call('ZREM', due_key, id)
  redis.call('ZADD', leased_key, until_, id)
  redis.call('HSET', run_key(id), 'lease_owner', owner, 'lease_until', until_)
  claimed[#claimed + 1] = {redis.call('HGETALL', run_key(id)), redis.call('HGETALL', steps_key(id))}
end
return claimed
"""

# ARGV: P, owner, until, run ids...
RENEW_LEASES = """
local owner, until_ = ARGV[2], ARGV[3]
local held = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if fenced(id, owner) then
    redis.call('HSET', run_key(id), 'lease_until', until_)
    redis.call('ZADD', P .. 'wf:leased', until_, id)
    held[#held + 1] = id
  end
end
return held
"""

# ARGV: P, id, owner, steps (n + pairs), emits.
SAVE_STEPS = """
local id, owner = ARGV[2], ARGV[3]
if not fenced(id, owner) then return {'LEASE'} end
emit_all(hset_pairs(steps_key(id), 4))
return {'OK'}
"""

# ARGV: P, id, owner, due_at|'', now, patch (n + pairs of 'm.<field>', JSON), emits.
RELEASE_RUN = """
local id, owner, due, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not fenced(id, owner) then return {'LEASE'} end
local key = run_key(id)
local at = hset_pairs(key, 6)
-- A notify or a finished child may have resolved a step while we held the run: then it is due
-- now, whatever we planned. (Inside a JSON string a quote is escaped, so the plain search
-- cannot match a step's text, only its `resolved` field.)
for _, text in ipairs(redis.call('HVALS', steps_key(id))) do
  if string.find(text, '"resolved":true', 1, true) then
    local step = cjson.decode(text)
    if step.resolved == true and step.state == 'STEP_PROGRESS' then due = now break end
  end
end
redis.call('HDEL', key, 'lease_owner', 'lease_until')
redis.call('ZREM', P .. 'wf:leased', id)
if due == '' then
  redis.call('HDEL', key, 'due_at')
  redis.call('ZREM', P .. 'wf:due', id)
else
  make_due(id, due)
end
emit_all(at)
return {'OK'}
"""

# ARGV: P, id, owner, state, result JSON, error JSON, now, the parent's step out, emits.
FINISH_RUN = """
local id, owner = ARGV[2], ARGV[3]
if not fenced(id, owner) then return {'LEASE'} end
close(id, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
emit_all(9)
return {'OK'}
"""

# ARGV: P, id, owner, position, event id, step JSON, emits.
WAIT_EVENT = """
local id, owner, position, event = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not fenced(id, owner) then return {'LEASE'} end
local lookback = P .. 'wf:lookback:' .. id
local data = redis.call('HGET', lookback, event)
if data then
  -- Consumed and recorded in one step: a crash now cannot lose the event.
  redis.call('HDEL', lookback, event)
  local step = cjson.decode(ARGV[6])
  step.out, step.resolved = data, true
  redis.call('HSET', steps_key(id), position, encode_object(step))
else
  redis.call('HSET', steps_key(id), position, ARGV[6])
  redis.call('SADD', P .. 'wf:waits:' .. event, id .. '|' .. position)
  redis.call('SADD', P .. 'wf:waitsof:' .. id, position .. '|' .. event)
end
emit_all(7)
if data then return {'OK', data} end
return {'OK'}
"""

# ARGV: P, event id, data, run id|'', now.
NOTIFY = """
local event, data, only, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
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
    woken = woken + resolve(id, position, data, now)
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

SCRIPTS = {
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
    return json.dumps({"state": state, "result": result, "error": error})


def emit_args(keyed: Sequence[tuple[str, str, str]], policy: HistoryPolicy) -> list[str | int]:
    """``emit_all``'s arguments: trimming, then (stream key, event, JSON) triples."""
    ttl = 0 if policy.expire_after is None else max(1, int(policy.expire_after * 1000))
    args: list[str | int] = [policy.max_length or 0, ttl]
    for triple in keyed:
        args.extend(triple)
    return args


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)

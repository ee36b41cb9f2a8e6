"""What each part of a step's save costs PostgreSQL: ``ss_save_step`` beside copies of it with
one part taken out, called one after the other on one connection (issue 10).

    python bench/pg_save_parts.py                      # commits wait for their WAL flush
    python bench/pg_save_parts.py --commit async       # synchronous_commit=off: no flush,
                                                       # the statements' own cost shows

One private durable PostgreSQL (``tests/postgres.py``, ``durable=True``), the stepstream schema
(the backend's own migrations), one started run held by this script, and next to the shipped
``ss_save_step`` (version 12) temporary copies of it: without the run's lock, the step's upsert,
the events' insert or the channel's update (ids made up instead), an UPDATE-then-INSERT for the
step instead of ``INSERT ... ON CONFLICT``, a loop of single-row INSERTs for the events instead
of ``unnest``, and two floors: the function returning at once (the call and its arguments) and
returning right after the lock. The copies are measurements, not candidates: the lock and the
upsert are what make a save safe. Every call saves the next step of the run with the two events
a workflow step reports; the variants take turns block by block. Prints the round trip's p50 and
p90 per variant and its difference from the shipped function. BENCHMARKS.md quotes it by hand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH.parent / "src")]

import asyncpg  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.postgres import postgres_server  # noqa: E402

from stepstream.backends import backend_from_url  # noqa: E402
from stepstream.backends.base import Claim, CreateRun  # noqa: E402
from stepstream.backends.postgres.connection import migrations  # noqa: E402
from stepstream.records import RunRecord, RunState  # noqa: E402

RUN = "wfr_abcdefghijklmnopqrstuv"
EVENTS = [
    f'{{"type":"stepStart","workflowRunId":"{RUN}","stepName":"s1","stepId":3,'
    '"timestamp":1764866000000}',
    f'{{"type":"stepFinish","workflowRunId":"{RUN}","stepName":"s1","stepId":3,'
    '"out":1764866000000000000,"timestamp":1764866000000}',
]
STEP = '{"name":"s1","type":"run","state":"STEP_SUCCESS","out":"1764866000000000000"}'

LOCK = "AND epoch = p_epoch FOR UPDATE;"
UPSERT = """    INSERT INTO steps (run_id, position, state, resolved, out, finished_at, data)
    VALUES (p_id, s_position, s_state, s_resolved, s_out, s_finished, s_data)
    ON CONFLICT (run_id, position) DO UPDATE SET state = excluded.state,
        resolved = excluded.resolved, out = excluded.out, finished_at = excluded.finished_at,
        data = excluded.data;"""
INSERT_EVENTS = """    INSERT INTO events (channel, ms, seq, event, data)
    SELECT p_id, k_ms, k_seq + e.i, e.event, e.data
    FROM unnest(e_events, e_datas) WITH ORDINALITY AS e(event, data, i);"""
CHANNEL_UPDATE = (
    "    UPDATE channels SET",
    "watched_until INTO k_ms, k_seq, watched;",
)
LOCKED = "USING ERRCODE = 'SS001';\n    END IF;"

# name -> (description, [(text of the shipped function, its replacement), ...])
VARIANTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "shipped": ("`ss_save_step` as shipped (version 12)", []),
    "no_lock": ("without the run's row lock (`FOR UPDATE`)", [(LOCK, "AND epoch = p_epoch;")]),
    "no_step": ("without the step's upsert", [(UPSERT, "")]),
    "no_events": ("without the events' insert", [(INSERT_EVENTS, "")]),
    "no_channel": (
        "without the channel's update (ids made up)",
        [
            (CHANNEL_UPDATE[0], "    k_ms := now_ms; k_seq := s_position * 10; PERFORM 1; /*"),
            (CHANNEL_UPDATE[1], CHANNEL_UPDATE[1] + " */"),
            (
                "    IF NOT FOUND THEN\n        PERFORM ss_append",
                "    IF false THEN\n        PERFORM ss_append",
            ),
        ],
    ),
    "update_insert": (
        "the step by UPDATE, then INSERT if none (no `ON CONFLICT`)",
        [
            (
                UPSERT,
                """    UPDATE steps SET state = s_state, resolved = s_resolved, out = s_out,
        finished_at = s_finished, data = s_data WHERE run_id = p_id AND position = s_position;
    IF NOT FOUND THEN
        INSERT INTO steps (run_id, position, state, resolved, out, finished_at, data)
        VALUES (p_id, s_position, s_state, s_resolved, s_out, s_finished, s_data);
    END IF;""",
            )
        ],
    ),
    "events_loop": (
        "the events by a loop of single-row INSERTs",
        [
            (
                INSERT_EVENTS,
                """    FOR i IN 1 .. n LOOP
        INSERT INTO events (channel, ms, seq, event, data)
        VALUES (p_id, k_ms, k_seq + i, e_events[i], e_datas[i]);
    END LOOP;""",
            )
        ],
    ),
    "lock_only": ("floor: returns right after the lock", [(LOCKED, LOCKED + " RETURN;")]),
    "empty": (
        "floor: returns at once (the call, its 13 arguments)",
        [("BEGIN\n", "BEGIN\n RETURN;\n")],
    ),
}


def shipped_save_step() -> str:
    """The newest migration's ``CREATE OR REPLACE FUNCTION ss_save_step(...)``."""
    for _, _, sql in reversed(migrations()):
        start = sql.find("CREATE OR REPLACE FUNCTION ss_save_step(")
        if start >= 0:
            end = sql.find("END $$;", start) + len("END $$;")
            return sql[start:end]
    raise SystemExit("no ss_save_step in the migrations")


def variant_sql(name: str, shipped: str) -> str:
    body = shipped.replace("FUNCTION ss_save_step(", f"FUNCTION pg_temp.save_{name}(")
    for old, new in VARIANTS[name][1]:
        if old not in body:
            raise SystemExit(f"variant {name}: the shipped function changed, {old[:40]!r} is gone")
        body = body.replace(old, new)
    return body


async def measure(url: str, rounds: int, block: int, commit: str) -> dict[str, list[float]]:
    backend = backend_from_url(url)
    await backend.open()
    try:
        await backend.create_run(
            CreateRun(
                RunRecord(id=RUN, workflow="wf", state=RunState.STARTED, created_at=1, due_at=0)
            )
        )
        (run,) = await backend.claim_runs(Claim("w1", 600_000, 1, ("wf",)))
    finally:
        await backend.close()
    conn = await asyncpg.connect(
        url,
        server_settings={
            "search_path": "stepstream",
            "stepstream.notify": "watched",
            "synchronous_commit": "on" if commit == "flush" else "off",
        },
    )
    shipped = shipped_save_step()
    for name in VARIANTS:
        await conn.execute(variant_sql(name, shipped))
    await conn.execute("SELECT ss_append($1, '{e}', '{1}', NULL, NULL)", RUN)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    position = 0
    for turn in range(rounds + 1):  # the first turn warms up
        for name in VARIANTS:
            call = (
                f"SELECT pg_temp.save_{name}($1, $2, $3, $4, 'STEP_SUCCESS', true, $5, 2, $6, "
                "$7, $8, NULL, NULL)"
            )
            for _ in range(block):
                position += 1
                args = (RUN, "w1", run.epoch, position, "1764866000000000000", STEP)
                started = time.perf_counter_ns()
                await conn.fetch(call, *args, ["workflow.update"] * 2, EVENTS)
                if turn:
                    times[name].append((time.perf_counter_ns() - started) / 1e3)
    await conn.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="turns of every variant")
    parser.add_argument("--block", type=int, default=100, help="calls per variant per turn")
    parser.add_argument("--commit", choices=["flush", "async"], default="flush")
    args = parser.parse_args()
    import uvloop

    with postgres_server(free_port(), durable=True) as server:
        times = uvloop.run(measure(server.url, args.rounds, args.block, args.commit))
    print(
        f"python bench/pg_save_parts.py --rounds {args.rounds} --block {args.block} "
        f"--commit {args.commit}"
    )
    base = statistics.median(times["shipped"])
    print("| variant | p50 (µs) | vs shipped | p90 (µs) |")
    print("|---|--:|--:|--:|")
    for name, values in times.items():
        values.sort()
        p50 = statistics.median(values)
        p90 = values[int(len(values) * 0.9)]
        print(f"| {VARIANTS[name][0]} | {p50:.0f} | {p50 - base:+.0f} | {p90:.0f} |")


if __name__ == "__main__":
    main()

"""Garbage-collector pause accounting for the benchmark servers (diagnostics only).

``install()`` hooks ``gc.callbacks`` and keeps, per generation, the number of collections, the
total and the longest pause; ``snapshot()`` returns them in milliseconds; ``reset()`` zeroes
them (called when a measured emit run starts). The cost is one Python call per collection.
"""

from __future__ import annotations

import gc
import os
import time

_start = 0
_stats: dict[int, list[float]] = {}


def _callback(phase: str, info: dict) -> None:
    global _start
    if phase == "start":
        _start = time.perf_counter_ns()
        return
    dur = (time.perf_counter_ns() - _start) / 1e6
    s = _stats.setdefault(info.get("generation", -1), [0, 0.0, 0.0])
    s[0] += 1
    s[1] += dur
    if dur > s[2]:
        s[2] = dur


def install() -> None:
    """Hook the collector. Diagnostics: ``BENCH_GC=off`` (``realtime.py --gc off``) disables
    automatic collection for the server's lifetime; ``BENCH_GC=freeze`` (``--gc freeze``)
    runs ``gc.freeze()`` once the app module is imported."""
    if _callback not in gc.callbacks:
        gc.callbacks.append(_callback)
    mode = os.environ.get("BENCH_GC")
    if mode == "off":
        gc.disable()
    elif mode == "freeze":  # move everything alive at startup out of the collector's sight
        gc.collect()
        gc.freeze()


def reset() -> None:
    _stats.clear()


def snapshot() -> dict[str, dict[str, float]]:
    return {
        f"gen{gen}": {"count": s[0], "total_ms": round(s[1], 2), "max_ms": round(s[2], 2)}
        for gen, s in sorted(_stats.items())
    }


def tracked() -> int:
    """Objects the collector tracks (what a full collection has to traverse)."""
    return len(gc.get_objects())

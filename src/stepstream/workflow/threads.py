"""The threads that run plain ``def`` step bodies, off the event loop.

A synchronous body runs on a thread so that a slow or blocking one never stalls the loop (and
with it the heartbeats that keep its run's lease). Handing a body over and its outcome back
costs two wake-ups, one each way, and nothing should sit beside them: a thread here takes a
job from a ``queue.SimpleQueue`` (C code, the GIL released while it waits), runs it, and waits
again. ``ThreadPoolExecutor`` does more around each job on both sides (a ``Future`` with its
condition, a work item, a semaphore), and its thread still holds the GIL for that bookkeeping
when the loop it has just woken wants to run: `python bench/thread_hop.py` measures both.

A job's ticket is a one-item list: the thread that runs it and a ``cancel`` that comes first
each take the job with ``list.pop``, which only one of them can win.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

Job = Callable[[], None]
Ticket = list[Job]


class StepThreads:
    """Up to ``limit`` threads, started as jobs need them, kept until ``close``; jobs beyond
    the limit wait their turn in order."""

    def __init__(self, limit: int, name: str) -> None:
        self._limit = limit
        self._name = name
        self._jobs: queue.SimpleQueue[Ticket | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._idle = 0  # threads waiting for a job that no submit has counted on yet
        self._closed = False

    def submit(self, job: Job) -> Ticket:
        """Queue ``job`` for a thread (starting one if none is free); its ticket for
        ``cancel``."""
        ticket = [job]
        with self._lock:
            if self._closed:
                raise RuntimeError("the step threads are closed")
            if self._idle:
                self._idle -= 1
            elif self._started < self._limit:
                self._started += 1
                name = f"{self._name}-{self._started}"
                # A daemon: an idle thread never holds up the interpreter's exit (nothing
                # else would wake it), and a body still running then is abandoned with the
                # process, as it would be by kill -9: its run's lease lapses and the step is
                # retried elsewhere (bodies run at least once).
                threading.Thread(target=self._work, name=name, daemon=True).start()
        self._jobs.put(ticket)
        return ticket

    @staticmethod
    def cancel(ticket: Ticket) -> bool:
        """Take back a job no thread has started (then it never will); False if one has."""
        try:
            ticket.pop()
        except IndexError:
            return False
        return True

    def close(self) -> None:
        """Cancel the jobs still waiting; each thread ends after the job it runs."""
        with self._lock:
            self._closed = True
            started = self._started
        while True:
            try:
                ticket = self._jobs.get_nowait()
            except queue.Empty:
                break
            if ticket is not None:
                self.cancel(ticket)
        for _ in range(started):
            self._jobs.put(None)

    def _work(self) -> None:
        get = self._jobs.get
        while (ticket := get()) is not None:
            try:
                job = ticket.pop()
            except IndexError:  # canceled while it waited
                pass
            else:
                job()  # never raises: a job reports its own outcome
            with self._lock:
                self._idle += 1

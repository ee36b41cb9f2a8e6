"""The threads that run plain ``def`` step bodies, off the event loop.

A synchronous body runs on a thread so that a slow or blocking one never stalls the loop (and
with it the heartbeats that keep its run's lease). Handing a body over and its outcome back
costs two wake-ups, one each way, and nothing should sit beside them: a thread here takes a
job from a ``queue.SimpleQueue`` (C code, the GIL released while it waits), runs it, and waits
again. ``ThreadPoolExecutor`` does more around each job on both sides (a ``Future`` with its
condition, a work item, a semaphore), and its thread still holds the GIL for that bookkeeping
when the loop it has just woken wants to run: ``python bench/thread_hop.py`` measures both.

A job's ticket is a one-item list: the thread that runs it and a ``cancel`` that comes first
each take the job with ``list.pop``, which only one of them can win.

The threads are daemons: an idle one never holds up the interpreter's exit (nothing else would
wake it), and a body still running then ends with the process (exit handlers run beside it)
without its outcome stored: its run, released when the worker stopped or left to its lease,
runs the step again (a body runs at least once).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable

log = logging.getLogger("stepstream.workflow")

Job = Callable[[], None]
Ticket = list[Job]
Item = tuple[Ticket, Job | None]  # a ticket and what to call if the job is dropped unstarted


class StepThreads:
    """Up to ``limit`` threads, started as jobs need them, kept until ``close``; jobs beyond
    the limit wait their turn in order."""

    def __init__(self, limit: int, name: str) -> None:
        self._limit = limit
        self._name = name
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        self._jobs: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        # Threads back from a job, less the submits that counted on one of them. Jobs that had
        # to queue (every thread busy, at the limit) are taken without being counted, so from
        # then on this overcounts; harmless, as no thread starts past the limit anyway.
        self._idle = 0
        self._closed = False

    def submit(self, job: Job, dropped: Job | None = None) -> Ticket:
        """Queue ``job`` for a thread (starting one if none is free); its ticket for
        ``cancel``. ``dropped`` is called if ``close`` drops the job before it starts."""
        ticket = [job]
        with self._lock:
            if self._closed:
                raise RuntimeError("the step threads are closed")
            if self._idle:
                self._idle -= 1
            elif self._started < self._limit:
                name = f"{self._name}-{self._started + 1}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
                self._started += 1  # once started: a thread that failed to start holds none
            self._jobs.put((ticket, dropped))  # under the lock: never behind close's stops
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
        """Drop the jobs still waiting (calling their ``dropped``); each thread ends after
        the job it runs."""
        with self._lock:
            self._closed = True
            waiting: list[Item] = []
            while True:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    waiting.append(item)
            for _ in range(self._started):
                self._jobs.put(None)
        for ticket, dropped in waiting:
            if self.cancel(ticket) and dropped is not None:
                dropped()

    def _work(self) -> None:
        get = self._jobs.get
        while (item := get()) is not None:
            try:
                job = item[0].pop()
            except IndexError:  # canceled while it waited
                pass
            else:
                try:
                    job()
                except BaseException:  # a job reports its own outcome: this is a bug
                    log.exception("a step thread's job raised")
                del job  # an idle thread keeps nothing of its last body (args, result, loop)
            del item
            with self._lock:
                self._idle += 1


_LIVE: weakref.WeakSet[StepThreads] = weakref.WeakSet()


def _after_fork() -> None:
    # A forked child has none of its parent's threads: its pools start again empty.
    for threads in list(_LIVE):
        threads._reset()


os.register_at_fork(after_in_child=_after_fork)

"""A process-wide scheduler for the app's compute jobs (no Streamlit in here).

Forty students pressing Run at once on a 2-core server must not each get 1/40 of the cores: every job
would crawl, the first live update would come after tens of seconds and nobody would know why. So at most
``slots`` jobs advance at a time (one per two cores by default; ``UAT_JOB_SLOTS`` overrides) and the
others wait in a first-come, first-served queue. A waiting job knows its position and an estimated wait
from the moment Run is pressed, and its page shows both, live.

Protocol (what :class:`webapp.jobs.Job` does): ``admit(job)`` on every pump. It returns True when the job
holds a slot (it may then advance), else False, and the job stays queued. ``release(job)`` when the job
ends or is stopped. Every ``admit`` call is also a heartbeat: a job that has not called for ``stale_after``
seconds (its browser tab was closed, its session ended) loses its slot or its place, so a visitor who
goes away never blocks the others.

With ``workers=True`` (the app's scheduler) a job that gets a slot is computed by a worker thread of its
own, back to back, and when it ends the first job in the queue takes the slot at once: the cores never
wait for a page to come back and ask. The pages then only check in (``admit``) and draw. Without workers
(the tests, the precompute script) whoever calls ``job.pump`` computes, as before.

The estimated wait is the sum of the expected remaining run time of the jobs ahead: for each kind of job
(page) the mean of the last few finished runs' wall time, 20 s before any finished.
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque


def default_slots() -> int:
    env = os.environ.get("UAT_JOB_SLOTS")
    if env:
        return max(1, int(env))
    return max(1, (os.cpu_count() or 2) // 2)


class Scheduler:
    def __init__(self, slots: int | None = None, stale_after: float = 20.0, clock=time.monotonic,
                 workers: bool = False, chunk: float = 0.25):
        self.slots = slots or default_slots()
        self.stale_after = stale_after
        self.clock = clock
        self.workers = workers                   # a thread per running job computes it (see the module doc)
        self.chunk = chunk                       # seconds a worker computes between checks that its job may go on
        self._lock = threading.Lock()
        self._running: dict[int, dict] = {}      # id(job) -> {"job", "seen", "since", "kind"}
        self._queue: deque[dict] = deque()       # waiting, in arrival order
        self._durations: dict[str, deque] = {}   # kind -> recent wall times (s)

    # ---- the protocol ----------------------------------------------------------------------------------
    def admit(self, job) -> bool:
        """True when ``job`` may advance now (it holds a slot); False while it waits. Also a heartbeat."""
        now = self.clock()
        with self._lock:
            self._evict(now)
            k = id(job)
            if k in self._running:
                self._running[k]["seen"] = now
                return True
            if getattr(job, "done", False):      # it ended (its slot is being released): never queue it again
                return False
            entry = next((e for e in self._queue if e["job"] is job), None)
            if entry is None:
                entry = {"job": job, "seen": now, "since": now, "kind": getattr(job, "name", "job")}
                self._queue.append(entry)
            entry["seen"] = now
            if self.workers:
                self._promote(now)
                return k in self._running
            if len(self._running) < self.slots and self._queue[0] is entry:
                self._queue.popleft()
                entry["since"] = now
                self._running[k] = entry
                return True
            return False

    def release(self, job) -> None:
        """The job ended (or was stopped): free its slot or its place in the queue."""
        now = self.clock()
        with self._lock:
            e = self._running.pop(id(job), None)
            if e is not None:
                self._durations.setdefault(e["kind"], deque(maxlen=5)).append(now - e["since"])
            self._queue = deque(x for x in self._queue if x["job"] is not job)
            if self.workers:
                self._promote(now)

    # ---- what a waiting visitor is told -----------------------------------------------------------------
    def position(self, job) -> int:
        """0 while running (or unknown), else 1 for the first in the queue, 2 for the next, ..."""
        with self._lock:
            for i, e in enumerate(self._queue):
                if e["job"] is job:
                    return i + 1
            return 0

    def expected(self, kind: str) -> float:
        d = self._durations.get(kind)
        return sum(d) / len(d) if d else 20.0

    def estimated_wait(self, job) -> float:
        """Seconds until ``job`` should get a slot: the remaining time of the running jobs and of the jobs
        queued ahead of it, spread over the slots."""
        now = self.clock()
        with self._lock:
            remaining = sorted(max(1.0, self.expected(e["kind"]) - (now - e["since"])) for e in self._running.values())
            ahead = []
            for e in self._queue:
                if e["job"] is job:
                    break
                ahead.append(self.expected(e["kind"]))
        if len(remaining) < self.slots:
            remaining += [0.0] * (self.slots - len(remaining))
        # slot i frees at remaining[i]; each job ahead takes the earliest free slot
        free = sorted(remaining)
        for d in ahead:
            free[0] += d
            free.sort()
        return free[0]

    def snapshot(self) -> dict:
        with self._lock:
            return {"slots": self.slots, "running": len(self._running), "queued": len(self._queue)}

    # ---- internals --------------------------------------------------------------------------------------
    def _evict(self, now: float) -> None:
        for k in [k for k, e in self._running.items() if now - e["seen"] > self.stale_after]:
            del self._running[k]
        self._queue = deque(e for e in self._queue if now - e["seen"] <= self.stale_after)

    def _promote(self, now: float) -> None:
        """(workers, under the lock) Give free slots to the first in the queue and start their workers."""
        self._evict(now)
        while self._queue and len(self._running) < self.slots:
            entry = self._queue.popleft()
            entry["since"] = now
            self._running[id(entry["job"])] = entry
            threading.Thread(target=self._work, args=(entry["job"],), daemon=True,
                             name=f"uat-job-{entry['kind']}").start()

    def _work(self, job) -> None:
        """A worker: compute ``job`` until it ends or loses its slot (its visitor stopped checking in)."""
        while not job.done:
            with self._lock:
                self._promote(self.clock())      # evicts jobs nobody checks in on (this one too), fills free slots
                if id(job) not in self._running:
                    return
            try:
                job.advance(self.chunk)
            except Exception:                    # a bug: the job recorded it as its error and ended
                return


# The one the app's sessions share. UAT_JOB_WORKERS=0 computes in the pages' own script runs instead (the
# design before workers: a page computes a slice each time it redraws, so the cores idle between redraws).
SCHEDULER = Scheduler(workers=os.environ.get("UAT_JOB_WORKERS", "1") != "0")

"""Experiments as jobs that advance in small time slices (no Streamlit in here, and no experiment logic:
the experiments themselves are :mod:`uat_core.recipes.experiments`, shared with the notebooks).

A :class:`Job` is a :class:`uat_core.recipes.experiments.Progress` that owns one experiment generator, so a UI can
call ``job.pump(0.4)`` to move it forward for about 0.4 s, draw ``job.state``, and come back later;
``job.stop()`` ends it after the current step; ``job.finish()`` runs it to the end (tests, the precompute
script). The generator's return value becomes ``job.result``. With a :mod:`webapp.scheduler` attached, a job
waits for a free slot before it computes, and with the app's scheduler (which has worker threads) it
computes in a worker while ``pump`` only checks in. :func:`webapp.pages_spec.page_job` makes the job of any
page, from the experiment its spec names.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from uat_core.engine.data import ImageData
from uat_core.engine.errors import UATError
from uat_core.recipes import experiments as X

if TYPE_CHECKING:
    from .scheduler import Scheduler


class Job(X.Progress):
    """One experiment in progress; see the module docstring."""

    def __init__(self, name: str, gen_fn: Callable[..., X.Experiment], *args,
                 on_done: Callable[["Job"], None] | None = None, **kwargs):
        super().__init__()
        self.name = name
        self.done = False
        self.result: Any = None
        self.error: str | None = None
        self.started = time.time()
        self.on_done = on_done
        self.scheduler: Scheduler | None = None     # wait for a slot in it before advancing
        self.queued = False                  # waiting for a slot right now
        self.started_computing = False
        self._gen = gen_fn(self, *args, **kwargs)
        self._lock = threading.Lock()
        self._collected = False              # on_done has run (see collect)

    def pump(self, budget: float = 0.4) -> int:
        """Advance for about ``budget`` seconds (at least one step); returns the number of steps taken.

        With a scheduler, this is first the job's heartbeat and its turn in the queue; with a scheduler that
        has workers (the app's), a worker thread computes the job once it holds a slot and ``pump`` only
        checks in (and returns 0). Either way a finished job's ``on_done`` runs here, in the caller's thread
        (the app's stores results in the visitor's session, which only the session's own thread may touch).

        Safe to call from several threads (Streamlit may start a new script run while a fragment run is
        still busy): a caller that finds the job already being advanced returns 0 at once.
        """
        if self.scheduler is not None and not self.done:
            if not self._take_turn() or self.scheduler.workers:      # waiting, or a worker computes it
                self.collect()
                return 0
        n = self.advance(budget)
        self.collect()
        return n

    def advance(self, budget: float) -> int:
        """Compute for about ``budget`` seconds (no queue, no heartbeat: the scheduler's workers call this)."""
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            return self._advance(budget)
        finally:
            self._lock.release()

    def collect(self) -> None:
        """Run ``on_done`` once, after the job ended without an error (see :meth:`pump` for the thread)."""
        if self.done and not self._collected:
            self._collected = True
            if self.on_done is not None and self.error is None:
                self.on_done(self)

    def _take_turn(self) -> bool:
        """Heartbeat and queue: True when the job holds a slot (False: it waits, or it was stopped waiting)."""
        sched = self.scheduler
        if sched is None:                    # no queue: always its turn
            return True
        if self.stopping and not self.started_computing:       # stopped while waiting: nothing to show
            sched.release(self)
            self.done, self.queued, self.current = True, False, None
            self._collected = True
            self.state["phase"] = "stopped before it started"
            return False
        if not sched.admit(self):
            self.queued = True
            pos, wait = sched.position(self), sched.estimated_wait(self)
            self.state.update(queue_position=pos, queue_wait=wait,
                              phase=f"waiting for a free slot: number {pos} in the queue, about {wait:.0f} s")
            return False
        if self.queued:
            self.queued = False
            self.state.pop("queue_position", None)
            if not self.started_computing:
                self.state["phase"] = "starting"
        return True

    def _advance(self, budget: float) -> int:
        if self.done:
            return 0
        self.started_computing = True
        t0, n = time.perf_counter(), 0
        while not self.done:
            try:
                next(self._gen)
            except StopIteration as stop:
                self._finish(stop.value)
            except UATError as e:
                self.error = str(e)
                self._finish(None)
            except Exception as e:               # a bug: keep the job from looping on it, then re-raise
                self.error = f"{type(e).__name__}: {e}"
                self._finish(None)
                raise
            n += 1
            if time.perf_counter() - t0 >= budget:
                break
        return n

    def finish(self) -> Any:
        """Run to the end; returns the result (None after an error)."""
        self.pump(math.inf)
        return self.result

    def _finish(self, result) -> None:
        self.result, self.current = result, None
        self.state["progress"] = 1.0
        self.state["phase"] = "stopped" if self.stopping else ("failed" if self.error else "done")
        self.done = True                     # before the slot goes: a check-in from now on cannot queue it again
        if self.scheduler is not None:
            self.scheduler.release(self)


# ---- one entry point for every page (the app and the precompute script build their jobs here) ------------

Start = Callable[[X.Progress], X.Experiment]     # an experiment, all but its progress bound: Job(name, start)


@dataclass(frozen=True)
class JobInputs:
    """What a page's experiment runs on; each page uses the part it needs (its spec's ``experiment``)."""
    train: ImageData
    test: ImageData
    model: Any = None                # the attacked model (torch.nn.Module)
    device: Any = None               # torch.device, or None: the engine's choice
    arch: str = ""                   # the architecture the training page trains
    models: dict | None = None       # the transfer matrix: name -> model ...
    deltas: dict | None = None       # ... and name -> δ

"""The process-wide job scheduler: slots, a first-come first-served queue, heartbeats, stop while queued."""
from __future__ import annotations

import threading
import time

from webapp.jobs import Job
from webapp.scheduler import Scheduler


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def steps(job, n=3):
    """A job generator that takes n steps and returns how many it took."""
    done = 0
    for _ in range(n):
        done += 1
        yield
    return done


def make(name="lab", n=3, on_done=None, sched=None):
    job = Job(name, steps, n, on_done=on_done)
    job.scheduler = sched
    return job


def test_one_slot_runs_jobs_one_at_a_time_in_arrival_order():
    clock = Clock()
    s = Scheduler(slots=1, clock=clock)
    a, b, c = make(sched=s), make(sched=s), make(sched=s)
    assert a.pump(0) == 1 and not a.queued                 # a takes the slot
    assert b.pump(0) == 0 and b.queued and c.pump(0) == 0
    assert (s.position(a), s.position(b), s.position(c)) == (0, 1, 2)
    assert b.state["queue_position"] == 1 and "number 1 in the queue" in b.state["phase"]
    assert c.pump(0) == 0                                  # c may not jump ahead of b
    clock.t = 10.0
    assert a.finish() == 3 and a.done
    assert c.pump(0) == 0 and s.position(c) == 2          # b is first in the queue, not c
    assert b.pump(0) == 1 and not b.queued and s.position(c) == 1
    assert b.finish() == 3 and c.finish() == 3


def test_two_slots_and_the_estimated_wait_uses_finished_runs():
    clock = Clock()
    s = Scheduler(slots=2, clock=clock)
    a, b, c, d = (make(sched=s) for _ in range(4))
    assert a.pump(0) and b.pump(0) and not c.pump(0) and not d.pump(0)
    assert s.estimated_wait(c) == 20.0                     # nothing finished yet: 20 s per run
    clock.t = 8.0
    a.finish()
    assert s.expected("lab") == 8.0
    assert c.pump(0) == 1 and not d.pump(0)                # c got a's slot
    clock.t = 10.0
    # b has run 10 s (expected 8: at least 1 s left), c 2 s (6 left): d waits for the earlier of the two
    assert s.estimated_wait(d) == 1.0


def test_a_job_that_stops_calling_loses_its_slot():
    clock = Clock()
    s = Scheduler(slots=1, stale_after=20.0, clock=clock)
    gone, waiting = make(sched=s), make(sched=s)
    assert gone.pump(0) and not waiting.pump(0)
    clock.t = 15.0
    assert not waiting.pump(0)                             # the holder was seen 15 s ago: still its slot
    clock.t = 30.0                                         # 30 s without a heartbeat: the tab was closed
    assert waiting.pump(0) == 1
    assert gone.pump(0) == 0 and gone.queued               # coming back, it queues again


def test_stop_while_queued_ends_the_job_without_a_result():
    s = Scheduler(slots=1, clock=Clock())
    stored = []
    a, b = make(sched=s), make(sched=s, on_done=lambda j: stored.append(j))
    a.pump(0)
    b.pump(0)
    b.stop()
    assert b.pump(0) == 0 and b.done and b.result is None and stored == []
    assert s.position(b) == 0 and s.snapshot() == {"slots": 1, "running": 1, "queued": 0}
    a.finish()
    assert s.snapshot()["running"] == 0


def test_without_a_scheduler_a_job_runs_at_once():
    job = make()
    assert job.finish() == 3 and not job.queued


# ---- the app's scheduler: worker threads compute, pages only check in ----------------------------------

def gated(job, gate: threading.Event, log: list, n=3, pause=0.0):
    """A job generator whose steps wait for ``gate`` (then ``pause`` s); it logs the thread each step ran in."""
    for _ in range(n):
        gate.wait(5)
        time.sleep(pause)
        log.append(threading.current_thread().name)
        yield
    return n


def wait_until(cond, timeout=5.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.005)
    return True


def test_workers_compute_a_job_without_its_page_and_hand_the_slot_over_at_once():
    s = Scheduler(slots=1, workers=True, chunk=0.01)
    gate, log, stored = threading.Event(), [], []
    a = Job("lab", gated, gate, log, on_done=lambda j: stored.append(("a", threading.current_thread().name)))
    b = Job("lab", gated, gate, log, on_done=lambda j: stored.append(("b", threading.current_thread().name)))
    a.scheduler = b.scheduler = s
    assert a.pump(0) == 0 and not a.queued                 # a holds the slot; the page's pump computes nothing
    assert b.pump(0) == 0 and b.queued
    gate.set()
    # nobody pumps from here on: a's worker computes it, and b takes the slot as soon as a ends
    assert wait_until(lambda: a.done and b.done), (a.state, b.state)
    assert a.result == b.result == 3
    assert log and all(name.startswith("uat-job-") for name in log)
    assert stored == []                                    # on_done waits for the visitor's own thread
    a.pump(0)
    b.collect()
    b.collect()                                            # once only
    me = threading.current_thread().name
    assert stored == [("a", me), ("b", me)]
    assert s.snapshot() == {"slots": 1, "running": 0, "queued": 0}


def test_a_worker_stops_computing_a_job_whose_visitor_left():
    clock = Clock()
    s = Scheduler(slots=1, workers=True, chunk=0.01, stale_after=20.0, clock=clock)
    gate, log = threading.Event(), []
    gone = Job("lab", gated, gate, log, n=100_000, pause=0.002)
    waiting = Job("lab", gated, threading.Event(), [], n=1)
    gone.scheduler = waiting.scheduler = s
    gone.pump(0)
    waiting.pump(0)
    gate.set()
    assert wait_until(lambda: len(log) > 3)
    clock.t = 15.0
    waiting.pump(0)                                        # the waiting visitor checks in; the other does not
    clock.t = 30.0
    assert wait_until(lambda: s.position(waiting) == 0 and s.snapshot()["running"] == 1)
    n = len(log)
    time.sleep(0.1)
    assert len(log) - n <= 1 and not gone.done             # its worker gave up (at most the step in flight)

"""The process-wide job scheduler: slots, a first-come first-served queue, heartbeats, stop while queued."""
from __future__ import annotations

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

"""Run / Stop and the live panel: a job's progress drawn by an ``st.fragment`` that re-runs itself.

Pressing Run creates a :class:`~webapp.jobs.Job` in ``st.session_state`` (in the button's callback, so
the same script run already draws it) and puts it in the process-wide queue (:mod:`webapp.scheduler`).
The live panel is a fragment that re-runs itself every ``EVERY`` seconds while the job runs
(``QUEUED_EVERY`` while it waits): each run calls ``job.pump(CHUNK)``, the job's check-in, draws the
job's state, and when the job is done stores the result and reruns the whole page once, so the result
section appears and the timer stops. The app's scheduler computes a job that holds a slot in a worker
thread of its own, so ``pump`` only checks in; with a scheduler without workers, ``pump`` computes about
``CHUNK`` seconds itself. Only the fragment re-runs while a job runs, so the rest of the page stays
responsive; Stop asks the engine to finish after its current step.

A job keeps going when the visitor opens another page: the sidebar's background panel (app.py) pumps
it there. In "sync" mode (``st.session_state["_uat_sync"] = True``, used by AppTest, or the
environment variable ``UAT_APP_SYNC=1``) a job runs to the end in the script run that starts it.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import streamlit as st

from uat_core import plots
from uat_core.engine.errors import UATError

from . import ui
from .budget import Estimate
from .jobs import Job
from .scheduler import SCHEDULER
from .settings import Ref
from .state import results

CHUNK = 0.4          # seconds of work per fragment run
EVERY = 0.5          # seconds between fragment runs while a job runs
QUEUED_EVERY = 2.0   # ... while it waits in the queue: forty waiting tabs must not keep the server busy redrawing
SYNC_KEY = "_uat_sync"


def sync_mode() -> bool:
    return bool(st.session_state.get(SYNC_KEY)) or os.environ.get("UAT_APP_SYNC") == "1"


def jobs() -> dict[str, Job]:
    return st.session_state.setdefault("_jobs", {})


def get(slot: str) -> Job | None:
    return jobs().get(slot)


def running(slot: str) -> bool:
    job = get(slot)
    return job is not None and not job.done


def _start(slot: str, make: Callable[[], Job], cost: "Estimate | None" = None) -> None:
    if running(slot):                        # a second click before the button was redrawn: one job per page
        return
    st.session_state.pop(f"_err_{slot}", None)
    if cost is not None and not cost.allowed:        # the button is disabled then; this guards a stale click
        st.session_state[f"_err_{slot}"] = cost.message
        return
    try:
        job = make()
    except UATError as e:
        st.session_state[f"_err_{slot}"] = str(e)
        return
    if not sync_mode():                      # the process-wide queue (tests run jobs to the end at once)
        job.scheduler = SCHEDULER
        job.pump(0.0)                        # joins the queue now: the position shows from the first draw
    jobs()[slot] = job


def _stop(slot: str) -> None:
    job = get(slot)
    if job is not None:
        job.stop()
        if job.queued:                       # still waiting for a slot: leave the queue at once
            job.pump(0.0)


def controls(slot: str, make: Callable[[], Job], label: str = "Run", disabled: bool = False,
             help: str | None = None, where=None, cost: "Estimate | None" = None) -> None:
    """Run and Stop buttons (in ``where``, default the sidebar); errors from starting show below them.

    ``cost`` (a :class:`webapp.budget.Estimate` of the current settings) is shown under the buttons; settings
    over the server's cap disable Run and say what to change."""
    where = where or st.sidebar
    busy = running(slot)
    over = cost is not None and not cost.allowed
    c1, c2 = where.columns(2)
    c1.button(label, key=f"{slot}_run", type="primary", disabled=busy or disabled or over, on_click=_start,
              args=(slot, make, cost), help=help, width="stretch", icon=":material/play_arrow:")
    c2.button("Stop", key=f"{slot}_stop", disabled=not busy, on_click=_stop, args=(slot,), width="stretch",
              icon=":material/stop:")
    if cost is not None:
        if over:
            where.warning(cost.message, icon=":material/block:")
        else:
            where.caption(cost.message)
    err = st.session_state.get(f"_err_{slot}")
    if err:
        where.error(err)


def panel(slot: str, draw: Callable[[Job], None]) -> Job | None:
    """The live fragment: advances the job in ``slot`` and draws it with ``draw(job)`` while it runs.

    The job stores its own result when it ends (its ``on_done``), whoever pumps it. Returns the job.
    """
    job = get(slot)
    if job is None:
        return None
    busy = not job.done
    sync = sync_mode()
    waiting = job.queued

    @st.fragment(run_every=None if (sync or not busy) else (QUEUED_EVERY if waiting else EVERY))
    def _live():
        j = get(slot)
        if j is None:
            return
        if not j.done:
            # Say at once what is happening: the pump below may take a while before anything is drawn.
            note = st.empty()
            if j.stopping:
                note.info("Stopping: the current step finishes, then the partial δ is measured on the test "
                          "images …", icon=":material/stop_circle:")
            elif j.progress == 0 and not j.queued:
                note.progress(0.0, text="Starting …")
            j.pump(math.inf if sync else CHUNK)
            if not j.stopping:               # (with the scheduler's workers pump returns at once: keep saying it)
                note.empty()
            if j.queued:
                st.info(f"The server is busy: your run is **number {j.state.get('queue_position', '?')}** in "
                        f"the queue, about **{j.state.get('queue_wait', 0):.0f} s** to wait. It starts by "
                        "itself; Stop cancels it.", icon=":material/hourglass_top:")
                return
            if waiting and not sync:         # it has just left the queue: redraw at the running pace
                st.rerun()
        j.collect()                          # a job a worker finished: store its result (this thread's session)
        if j.done and not getattr(j, "_finished", False):
            j._finished = True
            if j.error:
                st.session_state[f"_err_{slot}"] = j.error
            if not sync:
                st.rerun()
        if not j.done:
            draw(j)

    _live()
    return job


def progress_line(job: Job, where=None) -> None:
    """A progress bar with the job's phase and its compute time so far."""
    where = where or st
    where.progress(min(1.0, job.progress),
                   text=f"{job.state.get('phase', '')} · {job.compute_seconds:.1f} s of computation")


def background(current: str, names: dict[str, str]) -> None:
    """Keep jobs of other pages going while the visitor looks elsewhere (drawn in the sidebar)."""
    others = {s: j for s, j in jobs().items() if s != current and not j.done}
    finished = {s: j for s, j in jobs().items() if s != current and j.done and not getattr(j, "_finished", False)}
    if not others and not finished:
        return
    sync = sync_mode()

    @st.fragment(run_every=None if (sync or not others) else EVERY)
    def _bg():
        ended = False
        for slot, j in list(jobs().items()):
            if slot == current:
                continue
            if not j.done:
                j.pump(math.inf if sync else CHUNK / 2)
            j.collect()
            if j.done and not getattr(j, "_finished", False):
                j._finished = True
                if j.error:
                    st.session_state[f"_err_{slot}"] = j.error
                st.toast(f"{names.get(slot, slot)}: finished", icon="✅")
                ended = True
            if not j.done:
                st.caption(f":material/hourglass_top: {names.get(slot, slot)}: {100 * j.progress:.0f}% — running in "
                           "the background")
        if ended and not sync and not any(not j.done for j in jobs().values()):
            st.rerun()                     # stops this fragment's timer

    with st.sidebar:
        _bg()


def sweep_panel(job: Job, figure: Callable[[list, float | None], object], key: str) -> None:
    """Live view of a sweep job: the sweep so far (``figure(rows, clean)``) beside the current attack's curve."""
    progress_line(job)
    rows = job.state.get("rows", [])
    c1, c2 = st.columns(2)
    with c1:
        if rows:
            ui.chart(figure(rows, job.state.get("clean_top1")), key=f"{key}_live_sweep")
        else:
            st.info("The first point appears when the first attack is done.")
    with c2:
        if job.state.get("history"):
            ui.chart(plots.attack_curve(job.state["history"], title=f"Now: {job.state.get('phase', '')}"),
                     key=f"{key}_live_curve")


def stored_result(job: Job | None, want: Ref | None, default: Ref | None = None, run_label: str = "Run",
                  sweep: bool = False, none: str | None = None, partial: str | None = None) -> results.Shown:
    """The result section's gate, shared by the pages: stop while a job runs or without a model (``want``
    None); else the stored result for ``want`` (or the latest / the ``default`` one, said so on screen).

    ``none`` is what to say when there is no result yet, ``partial`` the warning over a stopped run's result.
    With ``sweep=True`` a sweep's defaults for both, and stop when the sweep has no finished point.
    """
    if (job is not None and not job.done) or want is None:
        st.stop()
    shown = results.find(want, default)
    if shown is None:
        st.info(none or f"No result for these settings yet: press **{run_label}** (on the left).")
        st.stop()
    ui.shown_note(shown, run_label)
    if sweep:
        partial = partial or "This sweep was stopped early: only the finished attacks are shown."
    if partial and not shown.result.get("complete", True):
        st.warning(partial)
    if sweep and not shown.result["rows"]:
        st.stop()
    return shown


"""The opening every page shares, once: data, defaults, title, sidebar, model choice, result keys, Run.

A page starts with ::

    P = page.open_page("lab", "One perturbation δ …", "Alg. 2, eq. (3)", "Attack settings")
    eps = P.eps_slider()
    s = P.settings(eps=eps, epochs=int(epochs))      # the page's defaults, the chosen model, these values
    P.controls(P.job_maker(s, complete), s)           # Run / Stop with the cost estimate of ``s``
    shown = live.stored_result(job, *P.refs(s))       # the result for ``s`` (or the latest, or the shipped one)

and keeps only its own widgets and its drawing. What the page is (title, defaults, experiment, cost) is its
spec in :mod:`webapp.pages_spec`; everything here is UI (no experiment logic): the jobs come from
:mod:`webapp.jobs`, the cost from :mod:`webapp.budget`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import streamlit as st

from uat_core.engine.data import ImageData

from . import live, ui
from . import settings as S
from .boot import through_app
from .jobs import Job
from .pages_spec import PageSpec, defaults, estimate, page_job, spec
from .state import data, results
from .state.models import Picked


@dataclass
class Page:
    spec: PageSpec
    ds: str                        # the dataset chosen in app.py's sidebar
    D: S.DatasetChoices            # its choices
    d: dict                        # the page's defaults on it
    train: ImageData | None
    test: ImageData
    sb: Any                        # the sidebar
    picked: Picked | None          # the chosen model (None: none available, or the page has no model choice)

    @property
    def name(self) -> str:
        """The page's id: its settings', cache keys' and widget keys' prefix."""
        return self.spec.id

    def eps_slider(self, lo: int = 1, hi: int = 32, label: str = "ε (0-255 units)", name: str = "eps") -> int:
        """The ε slider every attack page has, in the paper's 0-255 units, with the dataset's reason for its default."""
        return self.sb.slider(label, lo, hi, self.d["eps"], help=self.D.why_eps, **ui.w(self.name, name))

    def settings(self, **values) -> dict:
        """The page's settings: its defaults, the chosen model's name, then ``values``."""
        return {**self.d, "model": st.session_state.get(f"{self.name}_model", "natural"), **values}

    def refs(self, s: dict, tag: str | None = None) -> tuple[S.Ref | None, S.Ref | None]:
        """(the result for ``s``, the shipped result for the defaults with the same model) with the chosen model,
        or ``tag``; (None, None) without a model."""
        tag = tag or (self.picked.tag if self.picked else None)
        if tag is None:
            return None, None
        default = {**self.d, "model": s["model"]} if "model" in s else self.d
        return S.Ref(self.name, self.ds, tag, s), S.Ref(self.name, self.ds, tag, default)

    def remember(self, ref: S.Ref, result, complete: bool, private: bool | None = None) -> None:
        """Store a finished run's result (privately when the model is the visitor's own)."""
        private = self.picked.private if private is None and self.picked else bool(private)
        results.remember(ref, result, private, complete=complete)

    def job_maker(self, s: dict, complete: Callable[[Job], bool], show: dict | None = None,
                  **kw) -> Callable[[], Job]:
        """The ``make`` for :meth:`controls`: a job for ``s`` that stores its result for ``s`` when it ends (as
        complete when ``complete(job)``), with ``show`` put in its live state for the panel to draw."""
        want, _ = self.refs(s)

        def make() -> Job:
            def done(job: Job) -> None:
                if want is not None:
                    self.remember(want, job.result, complete(job))
            train = self.train if self.train is not None else data.train_set(self.ds)
            job = page_job(self.name, s, train, self.test, model=self.picked.model if self.picked else None,
                           device=data.device(), on_done=done, **kw)
            job.state.update(show or {})
            return job
        return make

    def controls(self, make: Callable[[], Job], s: dict, label: str = "Run", disabled: bool = False,
                 help: str | None = None, **cost) -> None:
        """Run / Stop for this page, with the estimated cost of ``s`` (``cost``: pages_spec.passes' extra counts)."""
        n_train = len(self.train) if self.train is not None else len(self.test)
        est = estimate(self.name, s, self.ds, n_train, len(self.test), **cost)
        live.controls(self.name, make, label=label, disabled=disabled, help=help, cost=est)


def open_page(name: str, intro: str, paper: str | None, settings_header: str, *,
              train: bool = True, model: bool = True, upload: bool = True) -> Page:
    """Run through app.py if needed, load the data, draw the page's title (its spec's), the intro and the
    sidebar's header and model choice."""
    through_app()
    sp = spec(name)
    ds = data.dataset()
    d = defaults(name, ds)
    p = Page(sp, ds, S.DATASET[ds], d, data.train_set(ds) if train else None, data.test_set(ds, d["test_size"]),
             st.sidebar, None)
    ui.header(sp.h1, intro, paper)
    p.sb.header(settings_header)
    if model:
        p.picked = ui.model_select(name, ds, p.sb, upload=upload)
    return p

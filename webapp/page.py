"""The opening every page shares, once: data, defaults, title, sidebar, model choice, result keys, Run.

A page starts with ::

    P = page.open_page("lab", "Universal attack lab", "One perturbation δ …", "Alg. 2, eq. (3)", "Attack settings")
    eps = P.eps_slider()
    s = P.settings(eps=eps, epochs=int(epochs))      # the page's defaults, the chosen model, these values
    key, default_key = P.keys(s)
    P.controls(make_job, s)                           # Run / Stop with the cost estimate of ``s``

and keeps only its own widgets and its drawing. Everything here is UI (no experiment logic): the jobs
come from :mod:`webapp.jobs`, the cost from :mod:`webapp.budget`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import streamlit as st

from uat_core.data import ImageData

from . import budget, live, state, ui
from . import settings as S
from .boot import through_app
from .jobs import page_job


@dataclass
class Page:
    name: str                      # "lab", "beta", … (the settings, cache and widget-key prefix)
    ds: str                        # the dataset chosen in app.py's sidebar
    D: dict                        # its choices (settings.DATASET[ds])
    d: dict                        # the page's defaults on it
    train: ImageData | None
    test: ImageData
    sb: Any                        # the sidebar
    picked: state.Picked | None    # the chosen model (None: none available, or the page has no model choice)

    def eps_slider(self, lo: int = 1, hi: int = 32, label: str = "ε (0-255 units)", name: str = "eps") -> int:
        """The ε slider every attack page has, in the paper's 0-255 units, with the dataset's reason for its default."""
        return self.sb.slider(label, lo, hi, self.d["eps"], help=self.D["why_eps"], **ui.w(self.name, name))

    def settings(self, **values) -> dict:
        """The page's settings: its defaults, the chosen model's name, then ``values``."""
        return {**self.d, "model": st.session_state.get(f"{self.name}_model", "natural"), **values}

    def keys(self, s: dict, tag: str | None = None) -> tuple[str | None, str | None]:
        """(key of the result for ``s``, key of the shipped result for the defaults with the same model)."""
        tag = tag or (self.picked.tag if self.picked else None)
        if tag is None:
            return None, None
        default = {**self.d, "model": s["model"]} if "model" in s else self.d
        return S.key(self.name, self.ds, tag, s), S.key(self.name, self.ds, tag, default)

    def remember(self, key: str, s: dict, result, complete: bool, private: bool | None = None) -> None:
        """Store a finished run's result (privately when the model is the visitor's own)."""
        private = self.picked.private if private is None and self.picked else bool(private)
        state.remember(self.name, key, s, result, private, complete=complete)

    def job_maker(self, s: dict, key: str | None, complete: Callable[[Any], bool], show: dict | None = None,
                  **kw) -> Callable[[], Any]:
        """The ``make`` for :meth:`controls`: a job for ``s`` that stores its result under ``key`` when it ends
        (as complete when ``complete(job)``), with ``show`` put in its live state for the panel to draw."""
        def make():
            def done(job):
                self.remember(key, s, job.result, complete(job))
            train = self.train if self.train is not None else state.train_set(self.ds)
            job = page_job(self.name, s, train, self.test, model=self.picked.model if self.picked else None,
                           device=state.device(), on_done=done, **kw)
            job.state.update(show or {})
            return job
        return make

    def controls(self, make: Callable, s: dict, label: str = "Run", disabled: bool = False,
                 help: str | None = None, **cost) -> None:
        """Run / Stop for this page, with the estimated cost of ``s`` (``cost``: budget.passes' extra counts)."""
        n_train = len(self.train) if self.train is not None else len(self.test)
        est = budget.estimate(self.name, s, self.ds, n_train, len(self.test), **cost)
        live.controls(self.name, make, label=label, disabled=disabled, help=help, cost=est)


def open_page(name: str, title: str, intro: str, paper: str | None, settings_header: str, *,
              train: bool = True, model: bool = True, upload: bool = True) -> Page:
    """Run through app.py if needed, load the data, draw the title and the sidebar's header and model choice."""
    through_app()
    ds = state.dataset()
    d = S.defaults(name, ds)
    p = Page(name, ds, S.DATASET[ds], d, state.train_set(ds) if train else None, state.test_set(ds, d["test_size"]),
             st.sidebar, None)
    ui.header(title, intro, paper)
    p.sb.header(settings_header)
    if model:
        p.picked = ui.model_select(name, ds, p.sb, upload=upload)
    return p

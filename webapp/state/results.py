"""Where results are kept, and which one a page shows.

A result is stored under its key (:class:`webapp.settings.Ref`: page, dataset, model with its hash, settings):
results of zoo models in a process-wide store shared by sessions, results of private models (uploaded or
trained here) in the session; the shipped precomputed results come last. A page asks with the Ref of its
current settings and the Ref of its defaults, and gets back a :class:`Shown` that carries the settings that
made the result it holds.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import streamlit as st
import torch

from ..precompute import load_precomputed, precomputed_path
from ..settings import Ref


class ResultStore:
    """A small thread-safe LRU map from settings keys to results."""

    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key: str, value) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


@st.cache_resource
def _global_store() -> ResultStore:
    return ResultStore(128)


def _session_store() -> ResultStore:
    if "_results" not in st.session_state:
        st.session_state["_results"] = ResultStore(64)
    return st.session_state["_results"]


@st.cache_resource(show_spinner=False)
def _precomputed(ds: str, mtime: float) -> dict:
    return load_precomputed(ds)


def precomputed(ds: str) -> dict:
    p = precomputed_path(ds)
    return _precomputed(ds, p.stat().st_mtime if p.is_file() else 0.0)


def lookup(ref: Ref):
    """The result stored for ``ref``: this session's, then the shared one, then the shipped one."""
    for store in (_session_store(), _global_store()):
        r = store.get(ref.key)
        if r is not None:
            return r
    return precomputed(ref.ds).get(ref.key)


def tensor_tag(t: torch.Tensor) -> str:
    """12 hex digits of the sha256 of a tensor's bytes (names a δ by its content in a result key)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:12]


def remember(ref: Ref, result, private: bool, complete: bool = True) -> None:
    """Store a finished result under its key (complete runs only) and as its page's latest result."""
    if complete:
        (_session_store() if private else _global_store()).put(ref.key, result)
    st.session_state.setdefault("_latest", {})[ref.page] = {"key": ref.key, "ds": ref.ds,
                                                             "settings": dict(ref.settings), "result": result,
                                                             "complete": complete}


def latest(page: str, ds: str) -> dict | None:
    """This session's latest result on ``page`` for dataset ``ds`` (a dict: key, ds, settings, result, complete)."""
    last = st.session_state.get("_latest", {}).get(page)
    return last if last is not None and last.get("ds") == ds else None


@dataclass(frozen=True)
class Shown:
    """What a page shows: ``kind`` is "exact" (the current settings), "latest" (this session's last run, with
    other settings) or "default" (the shipped result for the default settings); ``settings`` made ``result``."""
    kind: str
    result: Any
    key: str
    settings: dict


def find(want: Ref, default: Ref | None = None) -> Shown | None:
    """The result for ``want``, else this session's latest on its page, else the one for ``default``; or None."""
    r = lookup(want)
    if r is not None:
        return Shown("exact", r, want.key, dict(want.settings))
    last = latest(want.page, want.ds)
    if last is not None:
        return Shown("latest", last["result"], last["key"], last["settings"])
    if default is not None:
        r = lookup(default)
        if r is not None:
            return Shown("default", r, default.key, dict(default.settings))
    return None

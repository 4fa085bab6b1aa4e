"""Streamlit state: which data, which models, and where results are kept.

* Datasets and zoo models are ``st.cache_resource`` objects shared by every browser session (they are
  only read: attacks need input gradients, never weight updates).
* Models trained live or uploaded by a visitor live in that visitor's ``st.session_state`` only.
* Results are stored under a key made of page, dataset, model (with its hash) and settings
  (:func:`webapp.settings.key`): results of zoo models in a process-wide store shared by sessions,
  results of private models in the session; the shipped precomputed results come last.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from uat_core.data import ImageData, load_dataset, resolve_data_root
from uat_core.device import pick_device
from uat_core.download import cifar10_downloaded, cifar10_root
from uat_core.errors import UATError
from uat_core.zoo import ZOO_DIR, list_models

from . import settings as S
from .precompute import load_precomputed, precomputed_path

MAX_UPLOAD_MB = 50          # also server.maxUploadSize in .streamlit/config.toml


# ---- data --------------------------------------------------------------------------------------------

def cifar_source() -> str | None:
    """Where CIFAR-10 would come from (a sentence), or None when it is not on this machine.

    Not cached: it looks at the disk on every script run, so CIFAR-10 downloaded by the sidebar's button
    (``webapp.cifar``) or by the command line is offered from the next run on, without a restart."""
    root = resolve_data_root(None)
    if root and Path(root).expanduser().is_dir():
        return f"the CIFAR-10 copy at `{root}` (from `UAT_DATA` / `--data-root`)"
    if cifar10_downloaded():
        return f"the CIFAR-10 download in `{cifar10_root()}`"
    return None


def available_datasets() -> list[str]:
    return ["cifar10", "digits"] if cifar_source() else ["digits"]


def default_dataset() -> str:
    """CIFAR-10 when its data and at least one CIFAR-10 zoo model are here, else the digits."""
    return "cifar10" if cifar_source() and list_models("cifar10") else "digits"


def dataset() -> str:
    """The dataset chosen in the sidebar (set by app.py)."""
    ds = st.session_state.get("dataset") or default_dataset()
    return ds if ds in available_datasets() else "digits"


@st.cache_resource(show_spinner="Loading the images …", max_entries=4)
def _split(ds: str, split: str) -> ImageData:
    return load_dataset(ds, split, progress=False)


def train_set(ds: str) -> ImageData:
    return _split(ds, "train")


@st.cache_resource(show_spinner=False, max_entries=8)
def test_set(ds: str, size: int) -> ImageData:
    """A fixed stratified subset of the test split (all of it for digits)."""
    return _split(ds, "test").subset(size, seed=0)


def device() -> torch.device:
    return pick_device(os.environ.get("UAT_DEVICE"))


# ---- models ------------------------------------------------------------------------------------------

def zoo(ds: str) -> dict[str, dict]:
    """Manifest entries of ``ds`` by algorithm, in the paper's order."""
    entries = {e["algorithm"]: e for e in list_models(ds) if (ZOO_DIR / e["file"]).is_file()}
    return {a: entries[a] for a in S.ALGO_ORDER if a in entries} | {a: e for a, e in entries.items()
                                                                   if a not in S.ALGO_ORDER}


@st.cache_resource(show_spinner="Loading the model …", max_entries=16)
def _zoo_model(name: str, sha: str):
    from uat_core.zoo import load_zoo_model
    from uat_core.models import freeze
    model, meta = load_zoo_model(name, device=device())
    return freeze(model), meta                  # shared by every session: frozen once, never toggled


@st.cache_resource(show_spinner=False, max_entries=32)
def _zoo_delta(name: str, sha: str) -> torch.Tensor | None:
    from uat_core.zoo import load_zoo_perturbation
    try:
        return load_zoo_perturbation(name)
    except UATError:
        return None


@dataclass
class Picked:
    """A model chosen on a page."""
    model: torch.nn.Module
    tag: str                # the cache-key part naming the model: zoo:<name>:<sha12> | upload:<sha12> | session:...
    label: str              # for people
    private: bool           # uploaded or trained in this session: results stay in the session
    entry: dict | None = None   # the zoo manifest entry, if any


def zoo_model(ds: str, algo: str) -> Picked:
    e = zoo(ds)[algo]
    model, _ = _zoo_model(e["name"], e["sha256"])
    return Picked(model, S.zoo_tag(e), S.ALGO_LABEL.get(algo, algo), False, e)


def zoo_delta(ds: str, algo: str) -> torch.Tensor | None:
    e = zoo(ds).get(algo)
    return None if e is None else _zoo_delta(e["name"], e.get("perturbation_sha256", ""))


def study_pair(ds: str) -> tuple[dict, dict] | None:
    """(the zoo's natural model, the vulnerability study's most vulnerable natural model) of ``ds``: manifest
    entries with a shipped δ, or None where the study has shipped no model for ``ds``."""
    nat = zoo(ds).get("natural")
    study = [e for e in list_models(ds, group="study") if (ZOO_DIR / e["file"]).is_file()
             and e.get("perturbed_top1") is not None]
    if nat is None or not study:
        return None
    return nat, min(study, key=lambda e: e["perturbed_top1"])


def entry_model(e: dict) -> tuple[torch.nn.Module, torch.Tensor | None]:
    """A manifest entry's model (frozen, shared) and its shipped δ."""
    return _zoo_model(e["name"], e["sha256"])[0], _zoo_delta(e["name"], e.get("perturbation_sha256", ""))


def session_models(ds: str) -> dict[str, Picked]:
    """Models trained live on the training page in this session."""
    return st.session_state.setdefault("_session_models", {}).get(ds, {})


def add_session_model(ds: str, name: str, model, label: str) -> None:
    st.session_state.setdefault("_session_models", {}).setdefault(ds, {})[name] = Picked(
        model, f"session:{name}:{id(model)}", label, True)


def load_upload(data: bytes, ds: str) -> Picked:
    """Check and load an uploaded checkpoint of ours (weights only: nothing in it is unpickled as code)."""
    if len(data) > MAX_UPLOAD_MB * 2 ** 20:
        raise UATError(f"the file is {len(data) / 2 ** 20:.0f} MB; uploads are capped at {MAX_UPLOAD_MB} MB")
    sha = hashlib.sha256(data).hexdigest()
    cache = st.session_state.setdefault("_uploads", {})
    if sha in cache:
        return cache[sha]
    refused = _REFUSED.get((sha, ds))
    if refused is not None:                           # the same file again (every rerun): no second look
        raise UATError(refused)
    try:
        picked = _check_and_load(data, sha, ds)
    except UATError as e:
        _REFUSED[(sha, ds)] = str(e)
        raise
    cache.clear()                       # keep one uploaded model per session
    cache[sha] = picked
    return picked


MAX_UPLOAD_PARAMS = 60_000_000      # the largest architecture an upload may name (WRN 32-10 has 46 M)
_REFUSED: dict[tuple[str, str], str] = {}    # (sha256, dataset) -> the one-line refusal, process-wide


def _check_and_load(data: bytes, sha: str, ds: str) -> Picked:
    """Metadata first (types, architecture, parameter count on the meta device, channels, image size), then
    the model is built: a small file naming a huge architecture is refused without allocating it."""
    from uat_core.checkpoint import check_meta, check_weights_fit, load_checkpoint, read_checkpoint
    info = ds_info(ds)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.pt"
        path.write_bytes(data)
        try:
            obj = read_checkpoint(path)
            meta = check_meta(obj["meta"], path)
            if meta["num_classes"] != info["num_classes"] or meta["in_channels"] != info["shape"][0] \
                    or meta.get("dataset") != ds or int(meta.get("image_size", 0)) != info["shape"][1]:
                size = meta.get("image_size")
                raise UATError(f"the uploaded model takes {meta['in_channels']}-channel {size}×{size} images with "
                               f"{meta['num_classes']} classes ({meta.get('dataset')}), but the app is showing {ds}: "
                               "switch the dataset in the sidebar or upload a model for this dataset")
            check_weights_fit(meta, obj["state_dict"], MAX_UPLOAD_PARAMS, path)
            model, meta = load_checkpoint(path, expect={"num_classes": info["num_classes"], "shape": info["shape"]},
                                          device=device(), max_params=MAX_UPLOAD_PARAMS)
        except UATError as e:
            raise UATError(f"{str(e).replace(str(path), 'the uploaded file')} (the app is showing {ds})") from None
    for p in model.parameters():        # frozen once at load: no code path toggles it per call
        p.requires_grad_(False)
    return Picked(model.eval(), f"upload:{sha[:12]}", f"uploaded {meta['arch']} ({sha[:8]})", True)


def ds_info(ds: str) -> dict:
    from uat_core.data import dataset_info
    return dataset_info(ds)


# ---- results -----------------------------------------------------------------------------------------

class ResultStore:
    """A small thread-safe LRU map from settings keys to results."""

    def __init__(self, size: int):
        self.size, self._d, self._lock = size, OrderedDict(), threading.Lock()

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


def lookup(key: str):
    """The result stored under ``key``: this session's, then the shared one, then the shipped one."""
    for store in (_session_store(), _global_store()):
        r = store.get(key)
        if r is not None:
            return r
    ds = key.split("|", 2)[1]
    return precomputed(ds).get(key)


def tensor_tag(t: torch.Tensor) -> str:
    """12 hex digits of the sha256 of a tensor's bytes (names a δ by its content in a result key)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:12]


def remember(page: str, key: str, settings: dict, result, private: bool, complete: bool = True) -> None:
    """Store a finished result under its key (complete runs only) and as the page's latest result."""
    if complete:
        (_session_store() if private else _global_store()).put(key, result)
    st.session_state.setdefault("_latest", {})[page] = {"key": key, "settings": dict(settings), "result": result,
                                                         "complete": complete}


def latest(page: str) -> dict | None:
    return st.session_state.get("_latest", {}).get(page)


@dataclass
class Shown:
    """What a page shows: ``kind`` is "exact" (the current settings), "latest" (this session's last run,
    with other settings), "default" (the shipped result for the default settings) or "none"."""
    kind: str
    result: dict | None = None
    key: str | None = None

    @property
    def settings(self) -> dict:
        return S.settings_of(self.key) if self.key else {}


def find(page: str, ds: str, key: str, default_key: str | None = None) -> Shown:
    """The result for ``key``, else this session's latest on ``page``, else the default one."""
    r = lookup(key)
    if r is not None:
        return Shown("exact", r, key)
    last = latest(page)
    if last is not None and last["key"].split("|", 2)[1] == ds:
        return Shown("latest", last["result"], last["key"])
    if default_key is not None:
        r = lookup(default_key)
        if r is not None:
            return Shown("default", r, default_key)
    return Shown("none")

"""Which data: the dataset chosen in the sidebar, its images (shared by every session) and the torch device."""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st
import torch

from uat_core.engine.data import ImageData, load_dataset, resolve_data_root
from uat_core.engine.device import pick_device
from uat_core.engine.download import cifar10_downloaded, cifar10_root
from uat_core.zoo import list_models


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

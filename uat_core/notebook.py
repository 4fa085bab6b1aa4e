"""The notebooks' setup as one call: which dataset, which zoo models, ε and the fast mode.

Every notebook's first cell does ::

    NB = notebook.choose(needs=["natural", "uat"])        # the zoo models the notebook uses
    FAST, USE_CIFAR, DATASET, EPS, ZOO, MANIFEST = NB.fast, NB.use_cifar, NB.dataset, NB.eps, NB.zoo, NB.manifest
    TRAIN_SIZE, TEST_SIZE = ...                           # its own sizes, by FAST / USE_CIFAR
    train, test = NB.load(TRAIN_SIZE, TEST_SIZE)
    display(Markdown(NB.summary(train, test)))

CIFAR-10 is used when its images (``$UAT_DATA``, also accepted relative to the project root, which is the
notebooks' parent folder) and every zoo model the notebook needs are there, else scikit-learn's bundled
digits (offline, instant). ``UAT_FAST=1`` (what the tests run) always uses digits, tiny sets and one thread.
Nothing here draws: :meth:`Setup.summary` returns Markdown for the notebook to display.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import zoo
from .recipes.profiles import DATASETS
from .engine.data import ImageData, load_dataset, resolve_data_root

EPS = {ds: prof.eps for ds, prof in DATASETS.items()}   # ε in 0-255 units: the paper's 8 on CIFAR-10; digits 32


@dataclass
class Setup:
    dataset: str                 # "cifar10" or "digits"
    eps: int                     # ε (0-255 units) the notebook's attacks use
    fast: bool                   # UAT_FAST=1: the quick CI run
    data_root: str | None        # where CIFAR-10 was found (None: not found or not used)
    reason: str                  # one plain sentence: why this dataset
    zoo: dict = field(default_factory=dict)        # training algorithm -> zoo model name, on this dataset
    manifest: dict = field(default_factory=dict)   # zoo model name -> its manifest entry (every dataset)

    @property
    def use_cifar(self) -> bool:
        return self.dataset == "cifar10"

    def load(self, train_size: int | None, test_size: int | None) -> tuple[ImageData, ImageData]:
        """The training and test images (class-stratified subsets of these sizes; None = all)."""
        return (load_dataset(self.dataset, "train", root=self.data_root, limit=train_size, progress=False),
                load_dataset(self.dataset, "test", root=self.data_root, limit=test_size, progress=False))

    def summary(self, train: ImageData, test: ImageData) -> str:
        """Markdown: the dataset, why, the images used and ε."""
        fast = "  \n**Fast mode**: tiny sets and few epochs, so the numbers below are rough." if self.fast else ""
        return (f"**Dataset: {self.dataset}** ({self.reason}).  \n{train.source}: {len(train)} training and "
                f"{len(test)} test images used here, ε = {self.eps}/255.{fast}")


def _data_root() -> str | None:
    root = resolve_data_root(None)                                    # $UAT_DATA, if set
    if root and not Path(root).expanduser().is_dir() and (Path.cwd().parent / root).is_dir():
        root = str(Path.cwd().parent / root)                         # given relative to the project root
    return root


def choose(needs=("natural",), prefer: str = "auto", seed: int = 0) -> Setup:
    """Pick the dataset and zoo for a notebook that uses the zoo models ``needs`` (by training algorithm).

    ``prefer="digits"`` forces digits. Seeds torch with ``seed``; in fast mode also sets one intra-op thread
    (``UAT_TEST_THREADS`` overrides), as the test suite does."""
    fast = os.environ.get("UAT_FAST") == "1"
    if fast:
        torch.set_num_threads(int(os.environ.get("UAT_TEST_THREADS", "1")))
    torch.manual_seed(seed)
    root = _data_root()
    have = bool(root and Path(root).expanduser().is_dir())
    cifar_zoo = {m["algorithm"]: m["name"] for m in zoo.list_models("cifar10")}
    missing = [a for a in needs if a not in cifar_zoo]
    use = prefer == "auto" and not fast and have and not missing
    if use:
        reason = "its images ($UAT_DATA) and its zoo models are both available"
    elif fast:
        reason = "fast mode (UAT_FAST=1) always uses digits"
    elif prefer != "auto":
        reason = f"prefer = {prefer!r}"
    elif root is None:
        reason = "CIFAR-10 was not found; start JupyterLab with UAT_DATA=<CIFAR-10 folder> to use it"
    elif not have:
        reason = f"UAT_DATA={root} is not a folder"
    else:
        reason = f"the zoo has no CIFAR-10 {'/'.join(missing)} model yet (assets/models/manifest.json)"
    ds = "cifar10" if use else "digits"
    return Setup(ds, EPS[ds], fast, root if use else None, reason,
                 {m["algorithm"]: m["name"] for m in zoo.list_models(ds)},
                 {m["name"]: m for m in zoo.list_models()})

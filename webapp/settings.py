"""The app's vocabulary: datasets and their choices, labels, and the keys results are cached under.

A page's settings are a flat dict of plain values (numbers, strings, lists, None; β = ∞ is the
float ``math.inf``), typed per page in :mod:`webapp.pages_spec`, where each page's defaults per dataset
are written. The same dict drives the widgets' defaults, the job that computes the result, the
precomputed file (``python -m webapp.precompute``) and the cache key, so a page opened with its
defaults finds the shipped result, and moving a slider back finds the result computed before.

What a dataset *is* (its ε, architecture, channels) and what each training algorithm is called come from
:mod:`uat_core.recipes.profiles`; only the app's own choices (test subset, slider stops) are written here.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from uat_core.recipes.profiles import ALGORITHM_ORDER, ALGORITHMS, UNIVERSAL_ALGORITHMS
from uat_core.recipes.profiles import DATASETS as PROFILES
from uat_core.recipes.profiles import DatasetProfile


@dataclass(frozen=True)
class DatasetChoices:
    """A dataset's profile (uat_core) and the choices the app offers on it."""
    profile: DatasetProfile
    test_size: int                 # the fixed stratified test subset the pages measure on
    eps_l2: int                    # the attack lab's default ℓ2 radius (0-255 units) ...
    eps_l2_max: int                # ... and its slider's end
    attack_sizes: list[int] = field(default_factory=list)    # attack-set sizes offered
    train_sizes: list[int] = field(default_factory=list)     # training-set sizes offered (training page)

    @property
    def arch(self) -> str:
        return self.profile.arch

    @property
    def eps(self) -> int:
        return self.profile.eps

    @property
    def why_eps(self) -> str:
        return self.profile.why_eps

    @property
    def label(self) -> str:
        return self.profile.label


# Per dataset: the app's choices beside the profile's facts.
DATASET: dict[str, DatasetChoices] = {
    "digits": DatasetChoices(PROFILES["digits"], test_size=500, eps_l2=255, eps_l2_max=255,
                             attack_sizes=[100, 250, 500, 1000, 1297], train_sizes=[250, 500, 1297]),
    "cifar10": DatasetChoices(PROFILES["cifar10"], test_size=1000, eps_l2=128, eps_l2_max=255,
                              attack_sizes=[250, 500, 1000, 2000, 5000, 10000], train_sizes=[1000, 5000, 10000, 50000]),
}
DATASETS = tuple(DATASET)

DS_LABEL = {ds: c.label for ds, c in DATASET.items()}
INF = math.inf
OPTIMIZERS = ("sgd", "msgd", "pgd", "adam")
OPT_LABEL = {"sgd": "SGD", "msgd": "MSGD", "pgd": "PGD (sign)", "adam": "ADAM"}
ALGO_LABEL = {a: v.label for a, v in ALGORITHMS.items()}
ALGO_SHORT = {a: v.short for a, v in ALGORITHMS.items()}
ALGO_ORDER = list(ALGORITHM_ORDER)
UNIVERSAL_ALGOS = UNIVERSAL_ALGORITHMS            # those that carry a universal δ
BETAS = [float(b) for b in range(1, 21)] + [INF]


def paper_order(entries: dict[str, dict]) -> dict[str, dict]:
    """Zoo manifest entries by algorithm, the paper's algorithms first in their order, then any others."""
    return {a: entries[a] for a in ALGO_ORDER if a in entries} | {a: e for a, e in entries.items()
                                                                 if a not in ALGO_ORDER}


def _plain(v):
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def key(page: str, ds: str, model_tag: str, settings: dict) -> str:
    """A stable string naming one result: page, dataset, model (with its hash) and settings."""
    body = json.dumps({k: _plain(v) for k, v in sorted(settings.items())}, sort_keys=True)
    return f"{page}|{ds}|{model_tag}|{body}"


def page_of(key_: str) -> str:
    """The page id a key names."""
    return key_.split("|", 1)[0]


def settings_of(key_: str) -> dict:
    """The settings part of a key (β = ∞ comes back as the string "inf")."""
    return json.loads(key_.split("|", 3)[3])


@dataclass(frozen=True)
class Ref:
    """One result asked for: the page, dataset and model (tag) it belongs to and the settings that make it.
    Whoever holds a result through a Ref knows its settings without reading them back from the key."""
    page: str
    ds: str
    tag: str                       # the model: zoo:<name>:<sha12> | upload:<sha12> | session:... | zoo-set:...
    settings: dict[str, Any]

    @functools.cached_property
    def key(self) -> str:
        return key(self.page, self.ds, self.tag, self.settings)


def fmt_beta(b: float) -> str:
    return "∞" if math.isinf(b) else f"{b:g}"


def describe(settings: dict) -> str:
    """Settings as one short line for captions: "ε = 32, β = 9, PGD, 5 epochs, 500 images"."""
    parts = []
    for k, v in settings.items():
        if k == "eps":
            parts.append(f"ε = {v:g}")
        elif k == "beta":
            parts.append(f"β = {fmt_beta(v)}")
        elif k == "optimizer":
            parts.append(OPT_LABEL[v])
        elif k in ("model", "norm"):
            parts.append(str(v))
        elif k == "betas":
            parts.append("β ∈ {" + ", ".join(fmt_beta(b) for b in v) + "}")
        elif k == "step_size":
            parts.append("τ auto" if v is None else f"τ = {v:g}")
        elif k == "target":
            parts.append("untargeted" if v is None else f"target {v}")
        elif isinstance(v, list):
            parts.append(f"{k.replace('_', ' ')} {', '.join(map(str, v))}")
        else:
            parts.append(f"{k.replace('_', ' ')} {v}")
    return ", ".join(parts)


def zoo_tag(entry: dict) -> str:
    """The cache-key part naming a zoo model: its name and the start of its sha256."""
    return f"zoo:{entry['name']}:{entry['sha256'][:12]}"


def zoo_set_tag(entries: list[dict]) -> str:
    """One tag for a set of zoo models and their shipped perturbations (the transfer matrix)."""
    text = "\n".join(sorted(f"{e['name']}:{e['sha256']}:{e.get('perturbation_sha256', '')}" for e in entries))
    return "zoo-set:" + hashlib.sha256(text.encode()).hexdigest()[:12]

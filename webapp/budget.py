"""What a page's run will cost, and the cap a shared server puts on it (no Streamlit in here).

The unit is the **image pass**: one image forward and backward through the model, what one attack step
costs per image and (near enough) what one training step costs per image. A forward-only evaluation
counts a third of a pass. Estimates are rough on purpose (within a factor of about 2): they are for
telling a visitor, before Run, that 5 algorithms × 10 epochs × 50,000 CIFAR-10 images is hours of work on
a shared server, not for billing.

    est = pages_spec.estimate("uat", settings, "cifar10", n_train=50_000, n_test=1_000)   # a page's run
    est = for_passes(2e6, "cifar10")                                                     # any count of passes
    est.passes, est.seconds, est.allowed, est.message

Caps are per dataset (``CAPS``, image passes) and can be raised or lowered for a whole server with the
environment variable ``UAT_BUDGET_SCALE`` (for example 20 on a GPU server, 0.5 on a laptop that serves a
class). ``SECONDS_PER_PASS`` is the nominal speed that turns passes into a time: this project's 2-core
CPU server with the zoo's models (``python -m webapp.budget --measure`` prints it for the machine it runs on).
"""
from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from uat_core import zoo
from uat_core.engine.attacks.bank import pattern_bank
from uat_core.engine.attacks.strong import StrongConfig, halving_plan
from uat_core.recipes.profiles import ALGORITHMS
from uat_core.recipes.profiles import DATASETS as PROFILES

# Cap on the estimated cost of one run, in image passes, per dataset: about 10 minutes of this 2-core
# server's time (at SECONDS_PER_PASS). The queue shares the server between visitors; the cap keeps one run
# from holding a slot for an hour.
CAPS = {"digits": 500_000, "cifar10": 300_000}
# Seconds per image pass on this server (2 CPU cores, torch's default threads), from
# `python -m webapp.budget --measure` (digits' small CNN 1.1e-3, CIFAR-10's ResNet-20 1.9e-3 to 2.5e-3).
SECONDS_PER_PASS = {"digits": 1.1e-3, "cifar10": 2.2e-3}

EVAL = 1 / 3                 # a forward-only image
CHANNELS = {ds: prof.channels for ds, prof in PROFILES.items()}
IDF_PASSES_PER_IMAGE = 30    # DeepFool: a few iterations × one backward per candidate class


def cap(ds: str) -> float:
    """The cap of ``ds`` (image passes), scaled by $UAT_BUDGET_SCALE."""
    try:
        scale = float(os.environ.get("UAT_BUDGET_SCALE", "1"))
    except ValueError:
        scale = 1.0
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0
    return CAPS.get(ds, CAPS["cifar10"]) * scale


def train_passes(algo: str) -> int:
    """Image passes per training image and step of ``algo`` (uat_core's profiles; 2 for one it does not know)."""
    a = ALGORITHMS.get(algo)
    return a.passes if a is not None else 2


@functools.lru_cache(maxsize=8)
def bank_size(channels: int) -> int:
    """Patterns in the fixed-pattern bank for images with ``channels`` channels (uat_core.engine.attacks.bank)."""
    return len(pattern_bank((channels, 32, 32), 8 / 255, random=0).names)


def baseline_passes(n: int, channels: int) -> float:
    """The best fixed pattern of an attack on ``n`` images: the bank screened on 32 images, the best 4 on 128,
    those 4 on all ``n`` (bank.best_fixed_pattern; forward only)."""
    return EVAL * (bank_size(channels) * 32 + 4 * 128 + 4 * n)


def strong_passes(epochs: int, n: int, channels: int) -> float:
    """The strong attack with its default settings on ``n`` images (attacks/strong.py): the screen of the bank
    and 16 random starts, the refinement rounds (successive halving) and the scoring after each round."""
    cfg = StrongConfig()
    plan = halving_plan(epochs, cfg.top_k + 1, cfg.rounds)
    screen = EVAL * ((bank_size(channels) + cfg.restarts) * cfg.probe + 4 * cfg.top_k * 4 * cfg.probe + 2 * n)
    return screen + sum(k * ep * n for k, ep in plan) + EVAL * sum(k * n for k, _ in plan)


@dataclass(frozen=True)
class Counts:
    """What a run draws from, beside its settings: ``n_train`` / ``n_test`` images; ``n_models`` × ``n_deltas``:
    the transfer matrix; ``n_patterns``: the bank the starting-points page scores (None: the bank plus its
    random draws); ``channels``: of the images."""
    n_train: int
    n_test: int
    n_models: int = 1
    n_deltas: int = 1
    n_patterns: int | None = None
    channels: int = 3

    def size(self, s: Any, key: str = "attack_size") -> int:
        """The images a setting asks for (``s[key]``), at most the training images there are."""
        return min(int(s.get(key, self.n_train)), self.n_train)

    def test(self, s: Any) -> int:
        return min(int(s.get("test_size", self.n_test)), self.n_test)

    def evals(self, s: Any) -> float:
        """The three evaluations an attack ends with: clean, under δ, under the best fixed pattern."""
        return 3 * self.test(s) * EVAL


@dataclass
class Estimate:
    passes: float            # image passes
    seconds: float           # at this server's nominal speed
    cap: float               # image passes allowed for one run on this dataset
    dataset: str

    @property
    def allowed(self) -> bool:
        return self.passes <= self.cap

    @property
    def message(self) -> str:
        """One line for under the Run button: the cost, and what to change when it is over the cap."""
        what = f"about {_count(self.passes)} image passes (~{_duration(self.seconds)} on this server)"
        if self.allowed:
            return f"Estimated cost: {what}."
        return (f"Too large for this shared server: {what}, over the cap of {_count(self.cap)} for "
                f"{self.dataset}. Use fewer epochs, images, settings or models.")


def for_passes(p: float, ds: str) -> Estimate:
    """The estimate of ``p`` image passes on dataset ``ds``: its time on this server, and the cap."""
    return Estimate(p, p * SECONDS_PER_PASS.get(ds, SECONDS_PER_PASS["cifar10"]), cap(ds), ds)


def _count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    if n >= 1e3:
        return f"{n / 1e3:.0f} k"
    return f"{n:.0f}"


def _duration(sec: float) -> str:
    if sec < 90:
        return f"{max(1, round(sec))} s"
    if sec < 5400:
        return f"{sec / 60:.0f} min"
    return f"{sec / 3600:.1f} h"


def measure(repeats: int = 3) -> dict:
    """Seconds per image pass of each zoo's natural model on this machine (forward + input backward)."""
    out = {}
    for ds, name, shape in (("digits", "digits_smallcnn_natural", (1, 32, 32)),
                            ("cifar10", "cifar10_resnet20_natural", (3, 32, 32))):
        model, _ = zoo.load_zoo_model(name)
        x = torch.rand(128, *shape)
        y = torch.zeros(128, dtype=torch.long)
        best = math.inf
        for _ in range(repeats + 1):
            d = torch.zeros(shape, requires_grad=True)
            t0 = time.perf_counter()
            torch.nn.functional.cross_entropy(model(x + d), y).backward()
            best = min(best, time.perf_counter() - t0)
        out[ds] = best / 128
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Print this machine's seconds per image pass (the budget's time "
                                             "unit) for each dataset's zoo model, beside the nominal figures.")
    ap.add_argument("--measure", action="store_true", help="time one forward+backward of 128 images per model")
    a = ap.parse_args()
    if a.measure:
        for ds, sec in measure().items():
            print(f"{ds}: {sec:.2e} s per image pass here (nominal {SECONDS_PER_PASS[ds]:.1e})")
    else:
        ap.print_help()

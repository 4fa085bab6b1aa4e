"""The evaluation protocol: how every robustness figure of the project is measured, in one place.

A robustness figure is the test accuracy a model keeps under a universal perturbation built **from scratch
against that model, on training images only** (never the test images), shown beside the strongest fixed
pattern of the bank at the same ε (the baseline that needs no optimisation: an attack that does not beat it
is flagged). The attack is the strong multi-start search (``attacks/strong.py``) with the settings below; the
paper's plain Alg. 2 from δ = 0 (``attack="alg2"``) uses the same β, optimizer, epochs and seed, so the two
columns of a table differ only in the search.

The CLI's training report, the zoo's shipped perturbations, docs/results.md, the app's training page and
the benchmark all take their settings from here::

    run = protocol.attack_run(model, attack_set, eps=8)          # the strong attack, protocol settings
    result = run.run()
    protocol.record("strong", 8, len(attack_set), result)         # what a manifest or metrics.json stores

A model trained against fixed patterns on the very training images the attack is built on can flatter the
training-image protocol: the attack then picks its δ on images the model has fitted. The **held-out**
protocol (:func:`heldout_sets`) builds and selects δ on one stratified half of the test split and scores it on
the other half; a model's robustness is the lower of the two figures on that second half.
"""
from __future__ import annotations

import math

from ..engine.attacks import make_attack
from ..engine.data import ImageData

ATTACKS = ("strong", "alg2")     # the name every record uses: metrics.json's "attack", the manifest's
BETA = 9.0             # clip of the per-image cross-entropy (eq. 3)
OPTIMIZER = "pgd"      # the sign-gradient update, the paper's default
EPOCHS = 10            # passes of Alg. 2 over the attack images (the strong attack's winner gets as many)
SEED = 0


def attack_config(attack: str = "strong", eps: float = 8.0, epochs: int = EPOCHS, seed: int = SEED,
                  beta: float = BETA, **extra) -> dict:
    """The ``make_attack`` fields of the protocol's ``attack`` at ``eps`` (0-255 units)."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown protocol attack '{attack}': choose {' or '.join(ATTACKS)}")
    cfg = {"eps": eps, "beta": beta, "epochs": epochs, "seed": seed, "snapshot_every": 0, **extra}
    if attack == "alg2":
        cfg.setdefault("optimizer", OPTIMIZER)
    return cfg


def attack_run(model, attack_set: ImageData, attack: str = "strong", eps: float = 8.0, epochs: int = EPOCHS,
               seed: int = SEED, device=None, **extra):
    """The protocol's attack as an engine Run (iterate it for progress events, or ``.run()`` it)."""
    return make_attack(model, attack_set, attack, device, **attack_config(attack, eps, epochs, seed, **extra))


def record(attack: str, eps: float, attack_size: int, result=None, epochs: int = EPOCHS, seed: int = SEED,
           beta: float = BETA, **more) -> dict:
    """The plain-data description of how a δ was made, as the manifest and metrics.json store it."""
    out = {"attack": attack, "eps": eps, "beta": beta if math.isfinite(beta) else "inf", "optimizer": OPTIMIZER,
           "epochs": epochs, "attack_size": attack_size, "seed": seed}
    if result is not None:
        out["start"] = result.config.get("start", "zero")
    return {**out, **more}


def heldout_sets(test: ImageData, attack_size: int = 2000, seed: int = SEED) -> tuple[ImageData, ImageData]:
    """(attack images, scoring images) of the held-out protocol, both from the test split alone: the split is
    cut into stratified halves; the attack is built on ``attack_size`` images of the first half (all of it
    when smaller) and scored on the whole second half, which neither the model nor the attack has seen."""
    build, score = test.cut(len(test) // 2, seed)
    return build.subset(attack_size, seed), score

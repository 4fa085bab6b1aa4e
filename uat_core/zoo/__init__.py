"""The model zoo: trained models and their universal perturbations shipped in ``assets/models``.

    python -m uat_core.zoo build --dataset digits            # seconds per model
    python -m uat_core.zoo build --dataset cifar10 --only natural,lowcost   # GPU: minutes; CPU: ~15-45 min each
    python -m uat_core.zoo report --dataset cifar10          # writes docs/results.md
    python -m uat_core.zoo list

Each build trains with its recipe (``builder.RECIPES``: TrainConfig fields) through ``recipes.runs.run_training``, as
``uat train`` does, into ``runs/zoo/<name>`` (checkpoint every epoch, so an interrupted
build resumes where it stopped), copies the weights to ``assets/models/<name>.pt``, builds the default
universal perturbation against it with the strong attack (``engine/attacks/strong.py``; β = 9, 10 epochs) as
``<name>.delta.pt``, measures the best fixed bank pattern beside it and records everything in
``assets/models/manifest.json``. ``reattack`` rebuilds the shipped perturbations of existing models. The
app and the notebooks load models by name from here.

The package: ``store`` (the manifest, models and perturbations loaded by name), ``cache`` (attacks reused across
reports), ``report`` (docs/results.md), ``builder`` (training and shipping), ``commands`` (this command line).
"""
from __future__ import annotations

from .store import (GROUPS, MANIFEST, ROOT, SLICE, ZOO_DIR, list_models, load_zoo_model, load_zoo_perturbation,
                    natural_twin, read_manifest, sha256, slice_metrics, trained_on, write_manifest, zoo_name)
from .builder import RECIPES, RUNS, add_study_model, build, reattack, recipe, refresh, ship_perturbation
from .commands import main

__all__ = ["GROUPS", "MANIFEST", "ROOT", "SLICE", "ZOO_DIR", "list_models", "load_zoo_model", "load_zoo_perturbation",
           "natural_twin", "read_manifest", "sha256", "slice_metrics", "trained_on", "write_manifest", "zoo_name",
           "RECIPES", "RUNS", "add_study_model", "build", "reattack", "recipe", "refresh", "ship_perturbation", "main"]

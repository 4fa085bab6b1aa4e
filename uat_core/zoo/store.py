"""The zoo's store: the manifest (``assets/models/manifest.json``) and the shipped models and perturbations it
lists, loaded by name after a sha256 check. The app, the notebooks and the report read the zoo through here."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..engine.checkpoint import load_checkpoint
from ..engine.data import load_dataset
from ..engine.errors import UATError
from ..engine.evaluation import evaluate
from ..engine.export import load_perturbation
from ..engine.fileio import write_json
from ..recipes.profiles import DATASETS

ROOT = Path(__file__).resolve().parents[2]
ZOO_DIR = ROOT / "assets" / "models"
MANIFEST = ZOO_DIR / "manifest.json"


def trained_on(device: str | None) -> str:
    """Where a zoo model was trained, for people: "CPU" or the GPU's name (the manifest's ``device``)."""
    return "CPU" if device in (None, "", "cpu") else device


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest() -> dict:
    if MANIFEST.is_file():
        return json.loads(MANIFEST.read_text())
    return {"models": {}}


def write_manifest(man: dict) -> None:
    write_json(MANIFEST, man)


def zoo_name(dataset: str, algorithm: str) -> str:
    return f"{dataset}_{DATASETS[dataset].arch}_{algorithm}"


GROUPS = ("zoo", "study")   # zoo: one model per algorithm (Table 1); study: the vulnerability study's models


def list_models(dataset: str | None = None, group: str | None = "zoo") -> list[dict]:
    """Manifest entries (with ``name``), optionally for one dataset. ``group``: "zoo" (the default: the models
    of Table 1, one per algorithm), "study" (natural models of the vulnerability study, ``uat_core.recipes.study``)
    or None (all)."""
    man = read_manifest()
    return [{"name": k, **v} for k, v in man["models"].items() if (dataset is None or v["dataset"] == dataset)
            and (group is None or v.get("group", "zoo") == group)]


def natural_twin(dataset: str = "cifar10") -> tuple[dict, dict] | None:
    """(the zoo's natural model, the shipped study model whose clean accuracy is nearest to it): two natural
    classifiers of about the same clean accuracy, to set side by side under the same attack (ties go to the
    more vulnerable one). Only models with a shipped perturbation count; None when there is no such pair."""
    nat = next((e for e in list_models(dataset) if e["algorithm"] == "natural"), None)
    study = [e for e in list_models(dataset, group="study") if e.get("perturbed_top1") is not None
             and (ZOO_DIR / e["file"]).is_file()]
    if nat is None or not study:
        return None
    return nat, min(study, key=lambda e: (round(abs(e["clean_top1"] - nat["clean_top1"]), 3), e["perturbed_top1"]))


def load_zoo_model(name: str, device="cpu"):
    """(model, meta) of a shipped model, after checking its sha256 against the manifest."""
    man = read_manifest()["models"]
    if name not in man:
        raise UATError(f"no zoo model '{name}': choose one of {', '.join(sorted(man)) or '(none built yet)'}")
    path = ZOO_DIR / man[name]["file"]
    if sha256(path) != man[name]["sha256"]:
        raise UATError(f"{path} does not match its sha256 in the manifest")
    return load_checkpoint(path, device=device)


def load_zoo_perturbation(name: str) -> torch.Tensor:
    man = read_manifest()["models"]
    if name not in man or not man[name].get("perturbation"):
        raise UATError(f"no shipped perturbation for '{name}'")
    return load_perturbation(ZOO_DIR / man[name]["perturbation"])


SLICE = 1000   # the fixed, stratified test slice (seed 0) the tests check the manifest against


def slice_metrics(model, dataset: str, delta: torch.Tensor, data_root: str | None = None) -> dict:
    """Clean and perturbed top-1 on the fixed test slice (all 500 test images for digits)."""
    test = load_dataset(dataset, "test", data_root, limit=SLICE, seed=0, progress=False)
    m = evaluate(model, test.images, test.labels, delta, test.num_classes)
    return {"slice_size": len(test), "slice_clean_top1": m["clean_top1"], "slice_perturbed_top1": m["perturbed_top1"]}

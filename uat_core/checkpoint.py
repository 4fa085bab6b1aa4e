"""Checkpoints: weights plus the metadata needed to rebuild and trust a model.

A checkpoint is a plain dict of tensors, strings and numbers, so it loads with
``torch.load(..., weights_only=True)``: nothing in it is unpickled as code.

    {"format": "uat-lab/model", "version": 1,
     "meta": {"arch", "dataset", "classes", "num_classes", "in_channels", "image_size",
              "mean", "std", "training": {...}, "metrics": {...}},
     "state_dict": {...}}
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .errors import UATError
from .fileio import atomic_write
from .models import Normalized, build_model

FORMAT = "uat-lab/model"


def model_meta(arch: str, dataset: str, classes, in_channels: int, image_size: int, mean, std,
               training: dict | None = None, metrics: dict | None = None) -> dict:
    return {"arch": arch, "dataset": dataset, "classes": list(classes), "num_classes": len(classes),
            "in_channels": int(in_channels), "image_size": int(image_size),
            "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "training": dict(training or {}), "metrics": dict(metrics or {})}


def save_checkpoint(path, model: Normalized, meta: dict, extra: dict | None = None) -> Path:
    """Atomically write weights + metadata (+ optional resume state in ``extra``)."""
    obj = {"format": FORMAT, "version": 1, "meta": meta,
           "state_dict": {k: v.detach().cpu() for k, v in net_state(model).items()}}
    if extra:
        obj["extra"] = extra
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_checkpoint(path) -> dict:
    """Load and validate the dict (no model built). Foreign or corrupt files give a one-line UATError."""
    path = Path(path)
    if path.is_dir():
        raise UATError(f"checkpoint {path} is a folder, not a model file (a model.pt written by 'train')")
    if not path.is_file():
        raise UATError(f"checkpoint {path} not found")
    try:
        with warnings.catch_warnings():          # torch warns about foreign pickles; our error says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UATError(f"{path} is not a readable UAT Lab checkpoint ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("state_dict"), dict):
        raise UATError(f"{path} is not a UAT Lab model checkpoint")
    meta = obj.get("meta")
    need = ("arch", "num_classes", "in_channels", "mean", "std", "dataset")
    if not isinstance(meta, dict) or any(k not in meta for k in need):
        raise UATError(f"{path} is a UAT Lab checkpoint with incomplete metadata (needs {', '.join(need)})")
    for k, v in obj["state_dict"].items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
            raise UATError(f"{path} has NaN or Inf weights ({k}): the run that wrote it diverged")
    return obj


def load_checkpoint(path, expect: dict | None = None, device="cpu") -> tuple[Normalized, dict]:
    """(model in eval mode, meta). ``expect`` may hold ``shape`` (C,H,W) and ``num_classes`` to check
    the checkpoint fits the dataset, and ``arch`` to check the architecture."""
    obj = read_checkpoint(path)
    meta = obj["meta"]
    if expect:
        if "arch" in expect and expect["arch"] != meta["arch"]:
            raise UATError(f"{path} holds a {meta['arch']} model, not {expect['arch']}")
        if "num_classes" in expect and expect["num_classes"] != meta["num_classes"]:
            raise UATError(f"{path} was trained for {meta['num_classes']} classes ({meta['dataset']}), "
                           f"but the data has {expect['num_classes']}")
        if "shape" in expect and expect["shape"][0] != meta["in_channels"]:
            raise UATError(f"{path} takes {meta['in_channels']}-channel images ({meta['dataset']}), "
                           f"but the data has {expect['shape'][0]} channels")
    model = build_model(meta["arch"], meta["num_classes"], meta["in_channels"], meta["mean"], meta["std"])
    try:
        model.net.load_state_dict(_strip(obj["state_dict"]))
    except RuntimeError as e:
        raise UATError(f"{path}: weights do not fit a {meta['arch']} model "
                       f"({str(e).splitlines()[0][:120]})") from None
    return model.to(device).eval(), meta


def _strip(sd: dict) -> dict:
    """State dicts are saved from the Normalized wrapper's ``net`` (keys without 'net.')."""
    return {k[4:] if k.startswith("net.") else k: v for k, v in sd.items()
            if k not in ("mean", "std")}


def net_state(model: Normalized) -> dict:
    return getattr(model, "module", model).net.state_dict()

"""Checkpoints: weights plus the metadata needed to rebuild and trust a model.

A checkpoint is a plain dict of tensors, strings and numbers, so it loads with
``torch.load(..., weights_only=True)``: nothing in it is unpickled as code.

    {"format": "uat-lab/model", "version": 1,
     "meta": {"arch", "dataset", "classes", "num_classes", "in_channels", "image_size",
              "mean", "std", "training": {...}, "metrics": {...}},
     "state_dict": {...}}
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from .errors import UATError
from .fileio import atomic_write
from .models import Normalized, build_model, check_arch

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


def check_meta(meta: dict, path="the checkpoint") -> dict:
    """Types and ranges of the metadata, before anything is built from it (one-line UATError)."""
    def bad(what):
        raise UATError(f"{path}: its metadata is not valid ({what})")
    if not isinstance(meta.get("arch"), str) or len(meta["arch"]) > 100:
        bad("arch must be a short string")
    check_arch(meta["arch"])
    for k, hi in (("num_classes", 100_000), ("in_channels", 64), ("image_size", 4096)):
        v = meta.get(k, 32 if k == "image_size" else None)
        if not isinstance(v, int) or isinstance(v, bool) or not (1 <= v <= hi):
            bad(f"{k} must be an integer in [1, {hi}], got {v!r}")
    C = meta["in_channels"]
    for k in ("mean", "std"):
        v = meta.get(k)
        if not isinstance(v, (list, tuple)) or len(v) not in (1, C) or \
                not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
            bad(f"{k} must be 1 or {C} finite numbers")
    if any(x <= 0 for x in meta["std"]):
        bad("std must be > 0")
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, (list, tuple)) or len(classes) != meta["num_classes"]
                                or not all(isinstance(c, str) and len(c) <= 200 for c in classes)):
        bad(f"classes must be {meta['num_classes']} names")
    if not isinstance(meta.get("dataset"), str) or len(meta["dataset"]) > 300:
        bad("dataset must be a string")
    return meta


def check_weights_fit(meta: dict, state_dict: dict, max_params: int | None = None, path="the checkpoint") -> int:
    """Build the named architecture on PyTorch's "meta" device (shapes only, no memory), refuse it above
    ``max_params`` parameters, and check every weight of ``state_dict`` has its name and shape. Returns the
    parameter count."""
    with torch.device("meta"):
        shell = build_model(meta["arch"], meta["num_classes"], meta["in_channels"], meta["mean"], meta["std"])
    n = sum(p.numel() for p in shell.parameters())
    if max_params is not None and n > max_params:
        raise UATError(f"{path}: a {meta['arch']} model has {n / 1e6:.1f} M parameters; at most "
                       f"{max_params / 1e6:.0f} M are accepted here")
    want = {k: tuple(v.shape) for k, v in shell.net.state_dict().items()}
    have = _strip(state_dict)
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    wrong = [k for k in want
             if k in have and (not isinstance(have[k], torch.Tensor) or tuple(have[k].shape) != want[k])]
    if missing or extra or wrong:
        k = (missing or extra or wrong)[0]
        what = "is missing" if missing else ("is not part of the model" if extra else "has another shape")
        raise UATError(f"{path}: weights do not fit a {meta['arch']} model ('{k}' {what})")
    return n


def load_checkpoint(path, expect: dict | None = None, device="cpu",
                    max_params: int | None = None) -> tuple[Normalized, dict]:
    """(model in eval mode, meta). ``expect`` may hold ``shape`` (C,H,W) and ``num_classes`` to check
    the checkpoint fits the dataset, and ``arch`` to check the architecture. The metadata and the weights'
    names and shapes are checked before the model is built (``max_params``: refuse larger architectures)."""
    obj = read_checkpoint(path)
    meta = check_meta(obj["meta"], path)
    if expect:
        if "arch" in expect and expect["arch"] != meta["arch"]:
            raise UATError(f"{path} holds a {meta['arch']} model, not {expect['arch']}")
        if "num_classes" in expect and expect["num_classes"] != meta["num_classes"]:
            raise UATError(f"{path} was trained for {meta['num_classes']} classes ({meta['dataset']}), "
                           f"but the data has {expect['num_classes']}")
        if "shape" in expect and expect["shape"][0] != meta["in_channels"]:
            raise UATError(f"{path} takes {meta['in_channels']}-channel images ({meta['dataset']}), "
                           f"but the data has {expect['shape'][0]} channels")
    check_weights_fit(meta, obj["state_dict"], max_params, path)
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

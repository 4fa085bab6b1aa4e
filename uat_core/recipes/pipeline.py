"""High-level recipes shared by the CLI, the app and the notebooks (thin glue over the engine).

``make_attack`` (re-exported here) lives in the engine (``uat_core.engine.attacks``)."""
from __future__ import annotations

import time

import torch

from ..engine.attacks import make_attack
from ..engine.attacks.bank import baseline_of
from . import protocol
from ..engine.checkpoint import model_meta
from ..engine.data import ImageData
from ..engine.evaluation import evaluate_data
from ..engine.models import build_model
from ..engine.training import TrainConfig, Trainer

__all__ = ["new_model", "meta_for", "make_attack", "robustness_report", "make_trainer", "heldout_report"]


def new_model(arch: str, data: ImageData, seed: int = 0, pretrained: bool = False):
    """A freshly initialised classifier for ``data`` (seeded)."""
    torch.manual_seed(seed)
    return build_model(arch, data.num_classes, data.shape[0], data.mean, data.std, pretrained)


def meta_for(arch: str, data: ImageData, training: dict | None = None, metrics: dict | None = None) -> dict:
    return model_meta(arch, data.name, data.classes, data.shape[0], data.shape[1], data.mean, data.std,
                      training, metrics)


def robustness_report(model, train, test, eps: float = 8.0, attack_size: int = 2000,
                      epochs: int = protocol.EPOCHS, beta: float = protocol.BETA, seed: int = protocol.SEED,
                      device=None, progress=False, attack: str = "strong", norm: str = "linf") -> dict:
    """A fresh universal attack built from scratch against the trained model on ``attack_size`` training
    images, then clean and robust accuracy on ``test``, with the best fixed bank pattern beside it. ``train`` and
    ``test``: ImageData or FolderStream (the attack images are then decoded, the test split streamed).

    ``attack``: "strong" (the default: the multi-start search, attacks/strong.py) or "alg2" (the paper's
    protocol, Alg. 2 from δ = 0; its baseline pattern is then screened separately). ``norm``: the ball of the
    attack and of the fixed patterns (a model trained with ``--norm l2`` is reported in its own threat model)."""
    t0 = time.perf_counter()
    sub = train.subset(attack_size, seed)
    extra = {"norm": norm} if norm != "linf" else {}
    run = protocol.attack_run(model, sub, attack, eps, epochs, seed, device, beta=beta, **extra)
    res = run.run(progress=progress, desc=f"robustness attack ({attack})")
    fixed_name, fixed = baseline_of(res, model, sub.float_images(), sub.labels, eps / 255.0, norm, beta=beta,
                                    seed=seed, device=device)
    m, mf = evaluate_data(model, test, [res.delta, fixed], test.num_classes, device=device)
    return {"clean_top1": m["clean_top1"], "robust_top1": m["perturbed_top1"], "clean_top5": m["clean_top5"],
            "robust_top5": m["perturbed_top5"], "fooling_ratio": m["fooling_ratio"],
            "fixed_top1": mf["perturbed_top1"], "fixed_pattern": fixed_name,
            "beats_fixed": m["perturbed_top1"] < mf["perturbed_top1"],
            "attack": protocol.record(attack, eps, min(attack_size, len(train)), res, epochs, seed, beta,
                                      seconds=time.perf_counter() - t0, **extra), "delta": res.delta}


def make_trainer(arch: str, train: ImageData, config: TrainConfig, device=None, seed: int | None = None, **kw):
    model = new_model(arch, train, config.seed if seed is None else seed)
    return Trainer(model, train, config, device=device, **kw)


def heldout_report(model, test: ImageData, eps: float = 8.0, attack_size: int = 2000, train_delta=None,
                   epochs: int = protocol.EPOCHS, seed: int = protocol.SEED, device=None, progress=False) -> dict:
    """The held-out protocol (``protocol.heldout_sets``): the strong attack and the best fixed pattern built and
    picked on images of one half of the test split, both scored on the other half, beside ``train_delta`` (the
    δ the training-image protocol built, e.g. a zoo model's shipped one) scored on that same half. The model's
    robustness under this protocol (``heldout_robust_top1``) is the lowest of them."""
    t0 = time.perf_counter()
    build, score = protocol.heldout_sets(test, attack_size, seed)
    res = protocol.attack_run(model, build, "strong", eps, epochs, seed, device).run(
        progress=progress, desc="held-out attack (strong, test half A)")
    fixed_name, fixed = baseline_of(res, model, build.float_images(), build.labels, eps / 255.0, seed=seed,
                                    device=device)
    deltas = [res.delta, fixed] + ([train_delta] if train_delta is not None else [])
    got = evaluate_data(model, score, deltas, score.num_classes, device=device)
    out = {"heldout_strong_top1": got[0]["perturbed_top1"], "heldout_fixed_top1": got[1]["perturbed_top1"],
           "heldout_fixed_pattern": fixed_name, "heldout_start": res.config.get("start", "zero"),
           "heldout_clean_top1": got[0]["clean_top1"], "heldout_attack_size": len(build),
           "heldout_score_size": len(score), "heldout_seconds": time.perf_counter() - t0, "delta": res.delta}
    if train_delta is not None:
        out["train_strong_on_heldout_top1"] = got[2]["perturbed_top1"]
    out["heldout_robust_top1"] = min(v for k, v in out.items() if k in ("heldout_strong_top1", "heldout_fixed_top1",
                                                               "train_strong_on_heldout_top1"))
    return out

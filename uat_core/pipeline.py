"""High-level recipes shared by the CLI, the app and the notebooks (thin glue over the engine)."""
from __future__ import annotations

import math
import time

import torch

from .attacks import AttackConfig, IDeepFool, IDFConfig, UniversalAttack
from .checkpoint import model_meta
from .data import ImageData
from .evaluation import evaluate
from .models import build_model
from .training import TrainConfig, Trainer


def new_model(arch: str, data: ImageData, seed: int = 0, pretrained: bool = False):
    """A freshly initialised classifier for ``data`` (seeded)."""
    torch.manual_seed(seed)
    return build_model(arch, data.num_classes, data.shape[0], data.mean, data.std, pretrained)


def meta_for(arch: str, data: ImageData, training: dict | None = None, metrics: dict | None = None) -> dict:
    return model_meta(arch, data.name, data.classes, data.shape[0], data.shape[1], data.mean, data.std,
                      training, metrics)


def make_attack(model, attack_set: ImageData, method: str = "alg2", device=None, **cfg):
    """An Alg. 2 (``alg2``) or iDeepFool (``idf``) run over ``attack_set``; cfg: the config's fields."""
    x, y = attack_set.float_images(), attack_set.labels
    if method == "idf":
        return IDeepFool(model, x, y, IDFConfig(**cfg), device=device)
    return UniversalAttack(model, x, y, AttackConfig(**cfg), device=device)


def robustness_report(model, train: ImageData, test: ImageData, eps: float = 8.0, attack_size: int = 2000,
                      epochs: int = 10, beta: float = 9.0, seed: int = 0, device=None, progress=False) -> dict:
    """The paper's protocol: a fresh Alg. 2 attack (sign gradient, clipped CE) built from scratch against
    the trained model on ``attack_size`` training images, then clean and robust accuracy on ``test``."""
    t0 = time.perf_counter()
    run = make_attack(model, train.subset(attack_size, seed), "alg2", device, eps=eps, beta=beta,
                      optimizer="pgd", epochs=epochs, seed=seed, snapshot_every=0)
    res = run.run(progress=progress, desc="robustness attack")
    m = evaluate(model, test.images, test.labels, res.delta, test.num_classes, device=device)
    return {"clean_top1": m["clean_top1"], "robust_top1": m["perturbed_top1"], "clean_top5": m["clean_top5"],
            "robust_top5": m["perturbed_top5"], "fooling_ratio": m["fooling_ratio"],
            "attack": {"eps": eps, "beta": beta if math.isfinite(beta) else "inf", "optimizer": "pgd",
                       "epochs": epochs, "attack_size": min(attack_size, len(train)), "seed": seed,
                       "seconds": time.perf_counter() - t0}, "delta": res.delta}


def make_trainer(arch: str, train: ImageData, config: TrainConfig, device=None, seed: int | None = None, **kw):
    model = new_model(arch, train, config.seed if seed is None else seed)
    return Trainer(model, train, config, device=device, **kw)

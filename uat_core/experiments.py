"""The paper's experiments as small recipes, shared by the app pages, the notebooks and the zoo report.

Each sweep is a generator: it yields one result dict per finished attack, so a UI can draw as results
arrive and stop whenever it likes; ``list(gen)`` runs one to the end.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

from .data import ImageData
from .evaluation import evaluate
from .pipeline import make_attack


def attack_and_eval(model, attack_set: ImageData, test: ImageData, method: str = "alg2", device=None, **cfg) -> dict:
    """One attack built on ``attack_set``, evaluated on ``test``: metrics + δ + history + seconds."""
    run = make_attack(model, attack_set, method, device, **cfg)
    res = run.run()
    m = evaluate(model, test.images, test.labels, res.delta, test.num_classes, device=device,
                 target=cfg.get("target"))
    return {**m, "delta": res.delta, "history": res.history, "seconds": res.seconds, "steps": res.steps,
            "snapshots": res.snapshots, "config": res.config}


def beta_sweep(model, train: ImageData, test: ImageData, betas=(1, 3, 5, 9, 15, math.inf), repeats: int = 3,
               attack_size: int = 500, device=None, **cfg) -> Iterator[dict]:
    """Fig. 5: accuracy under attack against β, over ``repeats`` random attack subsets (seeds 0..r-1)."""
    for beta in betas:
        for r in range(repeats):
            out = attack_and_eval(model, train.subset(attack_size, seed=r), test, "alg2", device,
                                  **{**cfg, "beta": beta, "seed": r, "snapshot_every": 0})
            yield {"beta": beta, "repeat": r, "perturbed_top1": out["perturbed_top1"],
                   "clean_top1": out["clean_top1"], "seconds": out["seconds"]}


def datasize_sweep(model, train: ImageData, test: ImageData, sizes=(50, 100, 250, 500, 1000), repeats: int = 2,
                   device=None, steps: int | None = None, **cfg) -> Iterator[dict]:
    """Fig. 6: accuracy under attack against the number of images the attack sees.

    With ``steps`` every size gets about the same number of ascent steps (epochs = ⌈steps / minibatches
    per epoch⌉), so that a small attack set is not also a short run; otherwise ``epochs`` is fixed.
    """
    for n in sizes:
        kw = dict(cfg)
        if steps:
            per_epoch = math.ceil(min(n, len(train)) / kw.get("batch_size", 128))
            kw["epochs"] = max(1, math.ceil(steps / per_epoch))
        for r in range(repeats):
            out = attack_and_eval(model, train.subset(n, seed=r), test, "alg2", device,
                                  **{**kw, "seed": r, "snapshot_every": 0})
            yield {"size": min(n, len(train)), "repeat": r, "perturbed_top1": out["perturbed_top1"],
                   "clean_top1": out["clean_top1"], "seconds": out["seconds"], "steps": out["steps"]}


def summarize(rows: list[dict], key: str, value: str = "perturbed_top1") -> tuple[list, list, list]:
    """(xs, means, stds) over repeats, in the order the xs first appear."""
    xs, groups = [], {}
    for r in rows:
        if r[key] not in groups:
            xs.append(r[key])
            groups[r[key]] = []
        groups[r[key]].append(r[value])
    means = [sum(v) / len(v) for v in (groups[x] for x in xs)]
    stds = [torch.tensor(groups[x]).std(unbiased=False).item() if len(groups[x]) > 1 else 0.0 for x in xs]
    return xs, means, stds


def idf_vs_alg2(model, attack_set: ImageData, test: ImageData, eps: float = 8.0, passes: int = 5,
                device=None, **idf_options) -> dict:
    """Table 2: iDeepFool and Alg. 2 on the same model and images, the same number of passes.

    ``idf_options``: further IDFConfig fields (e.g. ``candidates``, ``max_iter``) for a quicker iDeepFool.
    """
    out = {}
    out["idf"] = attack_and_eval(model, attack_set, test, "idf", device,
                                 **{"xi": 1.0, **idf_options, "eps": eps, "max_passes": passes})
    out["alg2"] = attack_and_eval(model, attack_set, test, "alg2", device, eps=eps, epochs=passes, beta=9.0)
    return out


def transfer_matrix(models: dict, deltas: dict, test: ImageData, device=None) -> tuple[list, list, list]:
    """Accuracy of every model (columns) under every δ (rows). models/deltas: name -> model / δ."""
    from .evaluation import predict
    rows = []
    src, dst = list(deltas), list(models)
    y = test.labels.cpu()
    for s in src:                                   # perturbed top-1 only: no clean pass per cell
        rows.append([(predict(models[d], test.images, deltas[s], device=device, topk=1)[0][:, 0] == y)
                     .float().mean().item() for d in dst])
    return rows, src, dst


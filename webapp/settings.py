"""Every page's settings, their defaults per dataset, and the keys results are cached under.

A page's settings are a flat dict of plain values (numbers, strings, lists, None; β = ∞ is the
float ``math.inf``). The same dict drives the widgets' defaults, the job that computes the result,
the precomputed file (``python -m webapp.precompute``) and the cache key, so a page opened with its
defaults finds the shipped result, and moving a slider back finds the result computed before.
"""
from __future__ import annotations

import json
import math

DATASETS = ("digits", "cifar10")

# Per dataset: the architecture of its zoo, the default budget and the choices offered.
DATASET = {
    "digits": {
        "arch": "smallcnn", "eps": 32, "eps_l2": 255, "eps_l2_max": 255, "test_size": 500,
        "attack_sizes": [100, 250, 500, 1000, 1297], "train_sizes": [250, 500, 1297],
        "why_eps": "Digits are 8x8 images blown up to 32x32 with few grey levels, so the network "
                   "separates them with a wide margin: ε = 32/255 plays the role that ε = 8/255 "
                   "plays on CIFAR-10.",
    },
    "cifar10": {
        "arch": "resnet20", "eps": 8, "eps_l2": 128, "eps_l2_max": 255, "test_size": 1000,
        "attack_sizes": [250, 500, 1000, 2000, 5000, 10000], "train_sizes": [1000, 5000, 10000, 50000],
        "why_eps": "ε = 8/255 is the paper's budget for CIFAR-10.",
    },
}

DS_LABEL = {"digits": "digits", "cifar10": "CIFAR-10"}
INF = math.inf
OPTIMIZERS = ("sgd", "msgd", "pgd", "adam")
OPT_LABEL = {"sgd": "SGD", "msgd": "MSGD", "pgd": "PGD (sign)", "adam": "ADAM"}
ALGO_LABEL = {"natural": "natural", "uat": "uFGSM (Alg. 3)", "lowcost": "low-cost uFGSM (Alg. 4)",
              "uat_pool": "uFGSM + pool of 4 δ (Alg. 3)", "lowcost_pool": "low-cost + pool of 4 δ (Alg. 4)",
              "fgsm": "FGSM adv. training", "pgd": "PGD adv. training", "uadam": "uADAM (Alg. 3, ADAM on δ)"}
ALGO_ORDER = ["natural", "uat", "lowcost", "uat_pool", "lowcost_pool", "fgsm", "pgd", "uadam"]
ALGO_SHORT = {"natural": "natural", "uat": "uFGSM", "lowcost": "low-cost", "uat_pool": "uFGSM pool",
              "lowcost_pool": "low-cost pool", "fgsm": "FGSM", "pgd": "PGD", "uadam": "uADAM"}
UNIVERSAL_ALGOS = ("uat", "lowcost", "uat_pool", "lowcost_pool", "uadam")   # those that carry a universal δ
BETAS = [float(b) for b in range(1, 21)] + [INF]


def _per(ds: str, digits, cifar10):
    return digits if ds == "digits" else cifar10


def defaults(page: str, ds: str) -> dict:
    """The default settings of ``page`` ("lab", "beta", "race", "uat", "idf", "size", "transfer", "bank")."""
    d = DATASET[ds]
    base = {"model": "natural", "eps": d["eps"], "test_size": d["test_size"]}
    if page == "lab":
        return {**base, "norm": "linf", "beta": 9.0, "optimizer": "pgd", "step_size": None,
                "epochs": _per(ds, 5, 5), "attack_size": _per(ds, 500, 2000), "target": None, "seed": 0,
                "strong": False}
    if page == "beta":
        return {**base, "betas": [1.0, 2.0, 3.0, 5.0, 9.0, 15.0, INF], "repeats": _per(ds, 3, 2),
                "attack_size": _per(ds, 500, 1000), "epochs": _per(ds, 5, 4), "optimizer": "pgd"}
    if page == "race":
        return {**base, "epochs": _per(ds, 5, 5), "attack_size": _per(ds, 500, 1000), "beta": 9.0, "seed": 0}
    if page == "uat":
        return {"eps": d["eps"], "test_size": d["test_size"],
                "algorithms": ["natural", "uat", "lowcost", "uat_pool", "lowcost_pool"],
                "epochs": _per(ds, 8, 1), "train_size": _per(ds, 1297, 5000), "delta_rule": "fgsm",
                "attack_size": _per(ds, 500, 1000), "attack_epochs": _per(ds, 5, 3), "seed": 0}
    if page == "idf":
        return {**base, "attack_size": _per(ds, 128, 64), "idf_passes": 2, "alg2_epochs": 20,
                "idf_batch": 8}
    if page == "size":
        return {**base, "sizes": _per(ds, [25, 50, 100, 250, 500, 1297], [50, 100, 250, 500, 1000, 2000]),
                "repeats": 2, "steps": _per(ds, 20, 40)}
    if page == "transfer":
        return {"test_size": d["test_size"]}
    if page == "bank":
        return {**base, "test_size": 200, "beta": 9.0, "random": 4, "seed": 0}     # ~400 patterns × 200 images
    raise KeyError(page)


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
    import hashlib
    text = "\n".join(sorted(f"{e['name']}:{e['sha256']}:{e.get('perturbation_sha256', '')}" for e in entries))
    return "zoo-set:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def settings_of(key_: str) -> dict:
    """The settings part of a key (β = ∞ comes back as the string "inf")."""
    return json.loads(key_.split("|", 3)[3])

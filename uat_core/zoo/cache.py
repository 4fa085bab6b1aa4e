"""Universal attacks on zoo models, kept on disk: the report and the shipped perturbations reuse a δ an earlier
run made for the same model (sha256), ε, attack size and epochs instead of attacking again."""
from __future__ import annotations

from pathlib import Path

import torch

from ..engine.evaluation import evaluate
from ..engine.fileio import atomic_write
from ..recipes import protocol


def cache_path(cache: Path, sha: str, attack: str, eps: int, size: int, epochs: int) -> Path:
    """The cache file of one attack: the model's sha256, the attack (strong or alg2), ε (0-255 units), attack size and
    epochs."""
    return cache / f"{sha[:16]}_{attack}_eps{eps}_n{size}_e{epochs}.pt"


def _select_final(model, train, out: dict) -> dict:
    """The strong attack's rule (``StrongConfig.select="acc"``) applied to a cached result: of its δ and the
    best fixed pattern, keep the one that leaves fewer attack images correct."""
    x = train.images
    acc = [evaluate(model, x, train.labels, d, train.num_classes)["perturbed_top1"]
           for d in (out["delta"], out["fixed"])]
    out = dict(out, select="acc")
    if acc[1] < acc[0]:
        out.update(delta=out["fixed"].clone(), start=f"fixed {out['fixed_name']}")
    return out


def cached_attack(model, train, attack: str, eps, epochs, cache_file: Path | None) -> dict:
    """{"delta", and for the strong attack "fixed", "fixed_name", "start"} for ``model`` at ``eps``; reused
    from ``cache_file`` when an earlier run made it."""
    if cache_file is not None and cache_file.is_file():
        out = torch.load(cache_file, weights_only=True)
        if attack == "strong" and "select" not in out:  # cached before the fixed pattern competed for the final δ
            out = _select_final(model, train, out)
            atomic_write(cache_file, lambda tmp: torch.save(out, tmp))
        return out
    res = protocol.attack_run(model, train, attack, eps, epochs).run()
    if attack == "strong":
        out = {"delta": res.delta.clone(), "fixed": res.best_fixed.clone(),
               "fixed_name": res.config["best_fixed"]["name"], "start": res.config["start"],
               "seconds": float(res.seconds), "select": "acc"}
    else:
        out = {"delta": res.delta.clone(), "seconds": float(res.seconds)}
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_file, lambda tmp: torch.save(out, tmp))
    return out

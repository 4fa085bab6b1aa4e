"""A bank of structured universal perturbations: fixed patterns at the vertex of the ε-ball.

No optimisation: each pattern is the same δ for every image. They are the *baseline* every universal
attack must beat (a CNN is often fooled more by a stripe or a checkerboard at ±ε than by Alg. 2 started
at δ = 0), and the pool of starting points of the strong attack (``strong.py``).

Patterns (any shape (C,H,W); ℓ∞ entries are ±ε, for ℓ2 each pattern is scaled onto the ε-sphere):

    const     one colour everywhere (the per-channel sign vector below)
    rows      stripes varying down the image (horizontal bands), period p, phase φ
    cols      stripes varying across the image (vertical bands)
    diag      stripes along i + j;   anti    stripes along i − j
    checker   rows × cols (a checkerboard of p/2 × p/2 squares)
    rand±     uniform random signs per pixel and channel (seeded)
    randu     uniform random values in [−ε, ε] (seeded)

Every spatial pattern b(i, j) ∈ {±1} is combined with each per-channel sign vector c ∈ {±1}^C
(2^C colours, which include the global sign flip): δ = ε · c[:, None, None] · b.

Example::

    bank = pattern_bank((3, 32, 32), eps=8 / 255)          # Bank: patterns (M,3,32,32), names (M,)
    scores = score_bank(model, bank.patterns, x_probe, y_probe, beta=9)   # loss, acc per pattern (M,)
    bank.names[scores.acc.argmin()]                         # e.g. "checker p=4 φ=0 c=+-+"
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ..constraints import apply, check_norm
from ..errors import UATError
from ..losses import clipped_cross_entropy, targeted_objective

KINDS = ("rows", "cols", "diag", "anti", "checker")
PERIODS = (2, 3, 4, 6, 8, 16)        # in pixels; periods longer than the image are skipped


@dataclass
class Bank:
    patterns: torch.Tensor           # (M,C,H,W) pixel units, every one on the ε-ball's boundary
    names: list[str]                 # (M,) e.g. "rows p=4 φ=1 c=+-+"

    def __len__(self) -> int:
        return len(self.names)


def _square_wave(t: torch.Tensor, period: int, phase: int) -> torch.Tensor:
    """+1 on the first half of each period, −1 on the second (t: integer positions)."""
    return torch.where(((t + phase) % period) * 2 < period, 1.0, -1.0)


def _spatial(kind: str, H: int, W: int, p: int, phase: int) -> torch.Tensor:
    i = torch.arange(H)[:, None].expand(H, W)
    j = torch.arange(W)[None, :].expand(H, W)
    if kind == "rows":
        return _square_wave(i, p, phase)
    if kind == "cols":
        return _square_wave(j, p, phase)
    if kind == "diag":
        return _square_wave(i + j, p, phase)
    if kind == "anti":
        return _square_wave(i - j + 4 * max(H, W) * p, p, phase)      # keep the argument non-negative
    return _square_wave(i, p, phase) * _square_wave(j, p, 0)            # checker


def _phases(p: int) -> list[int]:
    """0 and a quarter period (quadrature) where that differs; half a period is a sign flip (a colour)."""
    return [0] if p < 4 else [0, p // 4]


def _colours(C: int) -> list[tuple[int, ...]]:
    return list(itertools.product((1, -1), repeat=C))


def _sign_str(c) -> str:
    return "".join("+" if s > 0 else "-" for s in c)


def pattern_bank(shape, eps: float, norm: str = "linf", kinds=KINDS, periods=PERIODS, random: int = 8,
                 seed: int = 0) -> Bank:
    """The structured perturbations for images of ``shape`` (C,H,W) at radius ``eps`` (pixel units).

    ``random``: how many random-sign and how many random-uniform draws to add (each; seeded by ``seed``).
    """
    check_norm(norm)
    if len(shape) != 3 or min(shape) < 1:
        raise UATError(f"a pattern bank needs an image shape (C,H,W), got {tuple(shape)}")
    if not eps > 0:
        raise UATError(f"eps must be > 0, got {eps}")
    for k in kinds:
        if k not in KINDS:
            raise UATError(f"unknown pattern kind '{k}': choose from {', '.join(KINDS)}")
    C, H, W = (int(s) for s in shape)
    cols = _colours(C)
    pats, names = [], []

    def add(b: torch.Tensor, name: str):              # b: (H,W) in {±1}
        for c in cols:
            pats.append(torch.tensor(c, dtype=torch.float32)[:, None, None] * b)
            names.append(f"{name} c={_sign_str(c)}")

    add(torch.ones(H, W), "const")
    for kind in kinds:
        for p in periods:
            if p > 2 * max(H, W):
                continue
            for ph in _phases(p):
                add(_spatial(kind, H, W, p, ph), f"{kind} p={p} φ={ph}")
    g = torch.Generator().manual_seed(seed)
    for r in range(random):
        pats.append(torch.randint(0, 2, (C, H, W), generator=g).float().mul_(2).sub_(1))
        names.append(f"rand± #{r}")
    for r in range(random):
        pats.append(torch.rand((C, H, W), generator=g).mul_(2).sub_(1))
        names.append(f"randu #{r}")
    P = torch.stack(pats)                                                   # (M,C,H,W) in [−1, 1]
    if norm == "linf":
        P = P * eps
    else:
        P = P * (eps / P.flatten(1).norm(dim=1).clamp_min(1e-12))[:, None, None, None]
    return Bank(P, names)


@dataclass
class BankScores:
    loss: torch.Tensor               # (M,) mean attack objective (clipped CE, or the targeted one)
    acc: torch.Tensor                # (M,) top-1 accuracy on the probe images
    target_rate: torch.Tensor | None = None


@torch.inference_mode()
def score_bank(model, patterns: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
               beta: float = math.inf, target: int | None = None, chunk: int = 2048, device=None,
               group=None) -> BankScores:
    """Objective and accuracy of every pattern on the same probe images, batched over patterns × images.

    patterns: (M,C,H,W); images: (n,C,H,W) float in [0, 1] or uint8; labels: (n,). Each forward pass takes
    ``chunk`` perturbed images (several patterns at once), so the whole bank costs ⌈M·n/chunk⌉ passes.
    ``group`` (under torchrun, every rank with the same arguments): each rank scores its contiguous shard of the
    images and the sums are added up across the ranks.
    """
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    total = len(images)
    if group is not None and group.world > 1:
        a, b = group.span(total)
        images, labels = images[a:b], labels[a:b]
    else:
        group = None
    x = images.to(device)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    y = labels.to(device)
    n = len(x)
    blk = max(1, min(n, chunk))                                             # images per block
    per = max(1, chunk // blk)                                              # patterns per forward pass
    M = len(patterns)
    loss_sum = torch.zeros(M, device=device)
    correct = torch.zeros(M, device=device)
    hits = torch.zeros(M, device=device)
    for s in range(0, M if n else 0, per):
        P = patterns[s:s + per].to(device)                                  # (m,C,H,W)
        for i in range(0, n, blk):
            xi, yi = x[i:i + blk], y[i:i + blk]
            logits = model(apply(xi[None], P[:, None]).flatten(0, 1))       # (m·b,K)
            yb = yi.repeat(len(P))
            if target is None:
                loss = clipped_cross_entropy(logits, yb, beta, reduction="none")
            else:
                loss = targeted_objective(logits, target, beta, reduction="none")
            pred = logits.argmax(1).view(len(P), len(xi))
            loss_sum[s:s + len(P)] += loss.view(len(P), len(xi)).sum(1)
            correct[s:s + len(P)] += (pred == yi[None]).sum(1)
            if target is not None:
                hits[s:s + len(P)] += (pred == target).sum(1)
    model.train(was)
    if group is not None:                                                   # Σ over the ranks' shards
        loss_sum, correct, hits = group.sum(torch.stack([loss_sum, correct, hits]))
        n = total
    return BankScores((loss_sum / n).cpu(), (correct / n).cpu(), (hits / n).cpu() if target is not None else None)


def screen(model, patterns: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, probe: int = 32,
           keep: int = 16, beta: float = math.inf, target: int | None = None, seed: int = 0,
           device=None, group=None) -> tuple[torch.Tensor, BankScores]:
    """Rank ``patterns`` (M,C,H,W) by their objective on a random probe of the attack images, in two stages:
    every pattern on ``probe`` images, then the best ``keep`` on ``4·probe`` images.

    Returns (indices of the best ``keep`` patterns, best first; their scores from the second stage).
    Costs about (M·probe + 4·keep·probe) forward passes of single images, batched.
    """
    g = torch.Generator().manual_seed(seed + 104729)
    perm = torch.randperm(len(images), generator=g)
    order = torch.arange(len(patterns))
    scores: BankScores | None = None
    for n_img, k in ((probe, len(patterns)), (4 * probe, keep)):
        order = order[:k]
        idx = perm[:min(n_img, len(images))]
        scores = score_bank(model, patterns[order], images[idx], labels[idx], beta, target, chunk=256, device=device,
                            group=group)
        rank = scores.loss.argsort(descending=True)               # clipped CE or the targeted objective: ↑
        order, scores = order[rank], BankScores(scores.loss[rank], scores.acc[rank],
                                                None if scores.target_rate is None else scores.target_rate[rank])
        if n_img >= len(images):
            break
    assert scores is not None                                     # the loop above runs at least once
    return order[:keep], scores if len(scores.loss) <= keep else BankScores(
        scores.loss[:keep], scores.acc[:keep], None if scores.target_rate is None else scores.target_rate[:keep])


@torch.inference_mode()
def best_fixed_pattern(model, images: torch.Tensor, labels: torch.Tensor, eps: float, norm: str = "linf",
                       beta: float = 9.0, target: int | None = None, probe: int = 32, finalists: int = 4,
                       seed: int = 0, device=None, group=None) -> tuple[str, torch.Tensor, float]:
    """The strongest fixed pattern of the bank against ``model``, chosen on the attack images only:
    screen the bank (:func:`screen`), then of the ``finalists`` best keep the one that leaves the fewest
    attack images correct (or, targeted, sends the most to the target).

    eps in pixel units. Returns (name, δ (C,H,W) on the CPU, its accuracy on the attack images). ``group``: under
    torchrun, the images are scored in shards, one a rank (:func:`score_bank`)."""
    device = device or next(model.parameters()).device
    bank = pattern_bank(tuple(images.shape[1:]), eps, norm, random=0)
    idx, _ = screen(model, bank.patterns, images, labels, probe, max(finalists, 1), beta, target, seed, device, group)
    full = score_bank(model, bank.patterns[idx], images, labels, beta, target, chunk=256, device=device, group=group)
    if target is None:
        key = full.acc
    else:
        assert full.target_rate is not None       # score_bank scores the target rate whenever there is a target
        key = -full.target_rate
    j = int(key.argmin())
    return bank.names[int(idx[j])], bank.patterns[int(idx[j])].clone(), float(full.acc[j])


def bank_pattern(name: str, shape, eps: float, norm: str = "linf") -> torch.Tensor:
    """The bank pattern called ``name`` (as in a manifest or a report) for images of ``shape`` at ``eps``."""
    bank = pattern_bank(shape, eps, norm)
    if name not in bank.names:
        raise UATError(f"no pattern '{name}' in the bank for shape {tuple(shape)}")
    return bank.patterns[bank.names.index(name)]


def baseline_of(result, model, images: torch.Tensor, labels: torch.Tensor, eps: float, norm: str = "linf",
                beta: float = 9.0, target: int | None = None, seed: int = 0, device=None,
                group=None) -> tuple[str, torch.Tensor]:
    """(name, δ) of the best fixed pattern for an attack ``result``: the one the strong attack already found,
    else :func:`best_fixed_pattern` screened on the same attack images (eps in pixel units)."""
    if result.best_fixed is not None:
        return result.config["best_fixed"]["name"], result.best_fixed
    name, delta, _ = best_fixed_pattern(model, images, labels, eps, norm, beta, target, seed=seed, device=device,
                                        group=group)
    return name, delta

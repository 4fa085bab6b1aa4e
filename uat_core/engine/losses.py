"""The clipped cross-entropy of Shafahi et al. (2020), eq. 3.

    L(δ) = 1/N Σ_i min( CE(f(x_i + δ), y_i), β )

Clipping at β stops a few images whose loss is already large from dominating the ascent direction:
a sample at or above β contributes a constant, so its gradient is exactly zero. β = ∞ gives plain
cross-entropy. The targeted variant pushes every image toward one class t; it is written as a loss to
*maximise* as well, so the attack loop is the same: L_t(δ) = -1/N Σ_i CE(f(x_i + δ), t).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def clipped_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, beta: float = math.inf,
                          reduction: str = "mean") -> torch.Tensor:
    """min(CE_i, β) per sample, averaged over the batch (``reduction="mean"``) or kept (``"none"``).

    logits: (N, K) float; labels: (N,) int64; beta > 0 (math.inf for no clipping).
    """
    ce = F.cross_entropy(logits, labels, reduction="none")            # (N,)
    if math.isfinite(beta):
        # clamp(max=β) has zero gradient where CE ≥ β: those samples no longer steer δ.
        ce = ce.clamp(max=beta)
    return ce.mean() if reduction == "mean" else ce


def targeted_objective(logits: torch.Tensor, target: int, beta: float = math.inf,
                       reduction: str = "mean") -> torch.Tensor:
    """An objective to maximise that pulls every image toward class ``target``: -min(CE(·, t), β).

    The clip at β acts the same way: images already far from t (CE ≥ β) stop steering δ, so it
    concentrates on the ones it can move.
    """
    t = torch.full((logits.shape[0],), int(target), dtype=torch.long, device=logits.device)
    return -clipped_cross_entropy(logits, t, beta, reduction)


def attack_objective(logits: torch.Tensor, labels: torch.Tensor, beta: float = math.inf,
                     target: int | None = None, reduction: str = "mean") -> torch.Tensor:
    """The scalar Alg. 2 ascends: untargeted clipped CE, or the targeted objective when ``target`` is set
    (``reduction="none"``: one value per image, whose sum several processes add up under torchrun)."""
    if target is None:
        return clipped_cross_entropy(logits, labels, beta, reduction)
    return targeted_objective(logits, target, beta, reduction)

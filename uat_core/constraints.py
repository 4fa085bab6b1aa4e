"""Constraint sets for δ: where a perturbation may live, kept apart from how it is updated.

Every perturbation is in pixel units (images in [0, 1]); ε here is a float in those units
(ε = 8/255 for the paper's "ε = 8"). ``project`` maps any δ back into the ball; ``apply`` adds δ
to a batch and clamps the result to valid images.
"""
from __future__ import annotations

import torch

NORMS = ("linf", "l2")


def check_norm(norm: str) -> str:
    from .errors import UATError
    if norm not in NORMS:
        raise UATError(f"unknown norm '{norm}': choose {' or '.join(NORMS)}")
    return norm


def project(delta: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Closest point of the ε-ball to δ (same shape as δ; one perturbation, not a batch).

    ℓ∞: clamp every entry to [-ε, ε]. ℓ2: rescale δ onto the sphere when ‖δ‖₂ > ε.
    """
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "l2":
        n = delta.norm(p=2)
        return delta * (eps / n) if n > eps else delta
    check_norm(norm)
    raise AssertionError  # unreachable


def norm_of(delta: torch.Tensor, norm: str = "linf") -> float:
    """‖δ‖ in the given norm, as a Python float (pixel units)."""
    return float(delta.abs().max() if norm == "linf" else delta.norm(p=2))


def apply(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x + δ clamped to [0, 1]. x: (N,C,H,W); δ: (C,H,W) broadcast to every image, or (N,C,H,W)."""
    return (x + delta).clamp_(0.0, 1.0) if not (x.requires_grad or delta.requires_grad) \
        else (x + delta).clamp(0.0, 1.0)


def random_start(shape, eps: float, norm: str = "linf", generator: torch.Generator | None = None,
                 device="cpu") -> torch.Tensor:
    """A uniform draw inside the ε-ball (ℓ∞: uniform in the cube; ℓ2: uniform direction, radius ε·u^(1/d))."""
    if norm == "linf":
        return (torch.rand(shape, generator=generator) * 2 - 1).mul_(eps).to(device)
    g = torch.randn(shape, generator=generator)
    d = g.numel()
    r = eps * float(torch.rand(1, generator=generator)) ** (1.0 / d)
    return (g / g.norm() * r).to(device)

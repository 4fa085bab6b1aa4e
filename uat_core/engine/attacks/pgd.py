"""Per-instance PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018,
https://arxiv.org/abs/1706.06083): a separate perturbation for every image, so it is an upper bound on what
any universal (one-δ-for-all) attack can do at the same ε. Used by the report beside the universal attacks.

    δ_i ← P_ε(δ_i + α · sign ∇_δ CE(f(x_i + δ_i), y_i)),   K steps from a uniform random start

Norm: ℓ∞; ε and α in 0-255 units (α defaults to 2.5·ε/K). Example::

    acc = pgd_accuracy(model, x_test, y_test, eps=8, steps=10)     # fraction still correct
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..constraints import Ball
from ..models import frozen


def pgd_perturb(grad_fn: Callable[[torch.Tensor], torch.Tensor], shape, ball: Ball, steps: int, alpha: float,
                generator: torch.Generator | None = None, device="cpu", random_start: bool = True) -> torch.Tensor:
    """Per-instance perturbations r (N,C,H,W) after K = ``steps`` sign steps of size ``alpha`` (pixel units), each
    followed by the projection onto the ℓ∞ ball:  r ← P(r + α·sign(grad_fn(r))),  from a uniform random start
    (``random_start``) or from r = 0 (one step of α = ε from 0 is FGSM). ``grad_fn(r)``: the gradient that moves r
    (the caller's: the attack's w.r.t. r itself, the training step's w.r.t. the perturbed input). The one PGD
    loop of the project: per-instance PGD and FGSM training and the PGD column of the report use it."""
    if ball.norm != "linf":
        raise ValueError("per-instance PGD runs in the ℓ∞ ball")
    r = ball.random_start(shape, generator, device) if random_start else torch.zeros(shape, device=device)
    for _ in range(steps):
        r = ball.project(r + alpha * ball.ascent(grad_fn(r)))
    return r


def pgd_accuracy(model, images: torch.Tensor, labels: torch.Tensor, eps: float = 8.0, steps: int = 10,
                 alpha: float | None = None, batch_size: int = 250, seed: int = 0, device=None) -> float:
    """Top-1 accuracy under per-instance ℓ∞ PGD-K. images: (N,C,H,W) uint8 or float in [0, 1]."""
    device = device or next(model.parameters()).device
    ball, a = Ball(eps), (alpha if alpha is not None else 2.5 * eps / steps) / 255.0
    g = torch.Generator().manual_seed(seed)
    correct = 0
    with frozen(model) as net:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
            y = labels[i:i + batch_size].to(device)

            def grad(d, x=x, y=y):
                d = d.detach().requires_grad_(True)
                return torch.autograd.grad(F.cross_entropy(net((x + d).clamp(0, 1)), y), d)[0]
            d = pgd_perturb(grad, x.shape, ball, steps, a, g, device)
            with torch.no_grad():
                correct += int((net((x + d).clamp(0, 1)).argmax(1) == y).sum())
    return correct / len(images)

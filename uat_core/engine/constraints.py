"""Constraint sets for δ: where a perturbation may live, kept apart from how it is updated.

Every perturbation is in pixel units (images in [0, 1]). The threat model is a :class:`Ball` (ε in 0-255 units,
as people read it, with its pixel value, projection, random start and steepest-ascent direction for ℓ∞ and ℓ2);
:class:`Update` holds the paper's update rules of δ (sign, sgd, momentum, adam), used by Alg. 2, the strong attack
and the training-time δ. The functions below take ε in pixel units (ε = 8/255 for the paper's "ε = 8"):
``project`` maps any δ back into the ball; ``apply`` adds δ to a batch and clamps the result to valid images.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UATError

NORMS = ("linf", "l2")


def check_norm(norm: str) -> str:
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


def per_member(norm_fn, t: torch.Tensor) -> torch.Tensor:
    """(m,1,...,1) ``norm_fn`` of each member of a stack t (m,...), shaped to broadcast against t."""
    return norm_fn(t.flatten(1)).view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class Ball:
    """The threat model: perturbations δ with ‖δ‖ ≤ ε, in pixel space (images in [0, 1]).

    ε is given in 0-255 units, as the paper and the user see it (``Ball(8)``: the paper's CIFAR-10 budget);
    ``eps`` is its pixel value (8/255). Kept apart from how δ is updated (:class:`Update`), as MadryLab's
    robustness keeps ``project`` apart from ``step``. Every method takes one δ (C,H,W) or, with
    ``stacked=True``, a stack (m,C,H,W) of independent perturbations (a pool of universal δs, or one per image)::

        ball = Ball(8, "linf")
        d = ball.random_start((3, 32, 32), generator)     # uniform in the ball
        d = ball.project(d + 0.1 * ball.ascent(g))         # one normalised steepest-ascent step, back in the ball
    """
    eps255: float                  # ε, 0-255 units
    norm: str = "linf"             # linf | l2 (ℓ2: the radius of the sphere, 0-255 units per pixel-unit norm)

    def __post_init__(self):
        check_norm(self.norm)

    @property
    def eps(self) -> float:
        """ε in pixel units."""
        return self.eps255 / 255.0

    def project(self, delta: torch.Tensor, stacked: bool = False) -> torch.Tensor:
        """The closest point of the ball (of each member's ball, ``stacked``)."""
        if not stacked or self.norm == "linf":
            return project(delta, self.eps, self.norm)
        n = per_member(lambda f: f.norm(p=2, dim=1), delta)
        return delta * (self.eps / n.clamp_min(1e-12)).clamp(max=1.0)

    def ascent(self, g: torch.Tensor, stacked: bool = False) -> torch.Tensor:
        """The steepest-ascent direction of unit size for gradient g: sign(g) (ℓ∞), g/‖g‖₂ (ℓ2; per member,
        ``stacked``). A step of size ε along it from δ = 0 lands on the boundary (the paper's FGSM step, eq. 6)."""
        if self.norm == "linf":
            return g.sign()
        if not stacked:
            return g / g.norm(p=2).clamp_min(1e-12)
        return g / per_member(lambda f: f.norm(p=2, dim=1), g).clamp_min(1e-12)

    def random_start(self, shape, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        """A uniform draw inside the ball (one δ of ``shape``)."""
        return random_start(shape, self.eps, self.norm, generator, device)

    def size(self, delta: torch.Tensor) -> float:
        """‖δ‖ in 0-255 units (the largest member's, for a stack)."""
        return norm_of(delta, self.norm) * 255.0 if self.norm == "linf" else \
            float(per_member(lambda f: f.norm(p=2, dim=1), delta.reshape(-1, *delta.shape[-3:])).max()) * 255.0


UPDATES = ("sign", "sgd", "momentum", "adam")


class Update:
    """One update rule of δ, ascending a gradient g: the paper's four (Alg. 2's optimizers and the training-time δ).

        sign      δ ← δ + τ·ascent(g)      (ℓ∞: τ·sign(g), the paper's FGSM/PGD step, eq. 6; ℓ2: τ·g/‖g‖)
        sgd       δ ← δ + τ·g               (eq. 7)
        momentum  SGD with momentum 0.9 on δ
        adam      ADAM ascent on δ (steps of about τ per pixel)

    τ in pixel units. The projection is the ball's, applied after the step (``Ball.project``). ``stacked``: δ is a
    stack of independent members (a pool), each ascending its own rows of g (the sign rule only, and sgd).
    Example::

        upd = Update("sign", delta, tau=1 / 255, ball=Ball(8))
        upd.step(delta, g)                   # in place, then projected
    """

    def __init__(self, rule: str, delta: torch.Tensor, tau: float, ball: Ball, stacked: bool = False):
        if rule not in UPDATES:
            raise UATError(f"unknown update rule '{rule}': choose {', '.join(UPDATES)}")
        if stacked and rule in ("momentum", "adam"):
            raise UATError(f"the {rule} rule keeps one state per δ: it cannot update a pool of perturbations")
        self.rule, self.tau, self.ball, self.stacked = rule, tau, ball, stacked
        self.opt: torch.optim.Optimizer | None = None
        if rule == "momentum":
            self.opt = torch.optim.SGD([delta], lr=tau, momentum=0.9, maximize=True)
        elif rule == "adam":
            self.opt = torch.optim.Adam([delta], lr=tau, maximize=True)

    def set_tau(self, tau: float) -> None:
        """A new step size (a schedule)."""
        self.tau = tau
        if self.opt is not None:
            for grp in self.opt.param_groups:
                grp["lr"] = tau

    def reset(self) -> None:
        """Forget the rule's state (momentum, ADAM's moments): a fresh start of δ."""
        if self.opt is not None:
            self.opt.state.clear()

    @torch.no_grad()
    def step(self, delta: torch.Tensor, g: torch.Tensor) -> None:
        """δ ← P(δ + update(g)), in place. δ and g: (C,H,W), or (m,C,H,W) stacked."""
        if self.rule == "sign":
            delta.add_(self.ball.ascent(g, self.stacked), alpha=self.tau)
        elif self.rule == "sgd":
            delta.add_(g, alpha=self.tau)
        else:
            assert self.opt is not None
            delta.grad = g
            self.opt.step()
            delta.grad = None
        delta.copy_(self.ball.project(delta, self.stacked))

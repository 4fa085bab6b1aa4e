"""One training step per algorithm: a minibatch x (B,C,H,W) float in [0, 1] and its labels y (B,) in, the history
row's metrics out. Each takes the :class:`~uat_core.engine.training.loop.Trainer` (``tr``) for its passes (which
count forward and backward passes), its optimizer and its adversary.

    natural   θ ← θ − α∇θ ℓ(x)                                                   1 forward, 1 backward
    uat       Alg. 3: θ ← θ − α∇θ ℓ(x+δ); then δ ← P(δ + update(E∇δ ℓ(x+δ)))        2 forward, 2 backward
    lowcost   Alg. 4: ∇θ and ∇δ from ONE backward of ℓ(x+δ); then both updates      1 forward, 1 backward
    fgsm      x' = x + ε·sign(∇x ℓ(x)) (or Wong et al.'s random start), train on x'   2 forward, 2 backward
    pgd       per-instance PGD-K from a random start (Madry et al. 2018)            K+1 forward, K+1 backward

``uat`` and ``lowcost`` run on the adversary's pool of δs: with one δ and no bank share (the default) every image
carries that δ and the step is the paper's algorithm exactly; with a pool, image b carries member (b + t) mod m
and every member ascends on its own images' gradient, in the same passes.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..attacks.pgd import pgd_perturb
from ..constraints import apply

if TYPE_CHECKING:
    from .loop import Trainer


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def _finish(tr: "Trainer", loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, rec: dict) -> dict:
    lv = loss.item()
    if not math.isfinite(lv):
        raise FloatingPointError("loss")
    rec.update(loss=lv, acc=accuracy(logits.detach(), y))
    return rec


def _train_on(tr: "Trainer", xa: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and backward of the weights' loss on xa, then the optimizer's step: (loss, logits)."""
    logits = tr.fwd(tr.net, xa)
    loss = tr.loss(logits, y)
    tr.backward(loss)
    tr.opt.step()
    return loss, logits


def natural(tr: "Trainer", x, y, gen: torch.Generator, track: bool) -> dict:
    loss, logits = _train_on(tr, x, y)
    return _finish(tr, loss, logits, y, {})


def fgsm(tr: "Trainer", x, y, gen: torch.Generator, track: bool) -> dict:
    """Per-instance FGSM training: plain (the paper's baseline), or Wong et al. 2020's fast FGSM (a uniform start
    in the ball and a step of 1.25·ε) with ``fgsm_random_start``."""
    ball, rs = tr.pgd_ball, tr.cfg.fgsm_random_start
    r = pgd_perturb(lambda r: tr.input_grad((x + r).clamp(0, 1), y), x.shape, ball, 1,
                    (1.25 if rs else 1.0) * ball.eps, gen, x.device, random_start=rs)
    loss, logits = _train_on(tr, (x + r).clamp(0, 1), y)
    return _finish(tr, loss, logits, y, {})


def pgd(tr: "Trainer", x, y, gen: torch.Generator, track: bool) -> dict:
    """Per-instance PGD-K training from a random start (step α = ``pgd_step_size``, default 2.5·ε/K)."""
    c, ball = tr.cfg, tr.pgd_ball
    alpha = (c.pgd_step_size / 255.0) if c.pgd_step_size else 2.5 * ball.eps / c.pgd_steps
    r = pgd_perturb(lambda r: tr.input_grad((x + r).clamp(0, 1), y), x.shape, ball, c.pgd_steps, alpha, gen,
                    x.device)
    loss, logits = _train_on(tr, (x + r).clamp(0, 1), y)
    return _finish(tr, loss, logits, y, {})


def uat(tr: "Trainer", x, y, gen: torch.Generator, track: bool) -> dict:
    """Alg. 3: the weights step with the current δs, then one ascent step of every δ with the updated weights
    (a second forward and backward that needs only the input gradient)."""
    adv = tr.adversary
    perturb, nb, a = adv.perturbations(x.shape[0], tr.step_i, gen)
    P = adv.pool.detach().clone()                                            # (m,C,H,W)
    loss, logits = _train_on(tr, apply(x, perturb(P)), y)
    Pg = P.requires_grad_(True)
    g, logits_new = tr.delta_grad(lambda: apply(x, perturb(Pg)), Pg, y)     # θ_new: ∇ of every member at once
    adv.ascend(g, tr.world)
    rec = {"acc_before": accuracy(logits_new, y)}                               # θ_new, δ_old: free
    if track:
        rec["acc_after"] = tr.probe(x, y, perturb(adv.pool.detach()))       # θ_new, δ_new
    adv.record_losses(logits.detach(), y, nb, a)
    rec["delta_norm"] = adv.ball.size(adv.pool.detach())
    return _finish(tr, loss, logits, y, rec)


def lowcost(tr: "Trainer", x, y, gen: torch.Generator, track: bool) -> dict:
    """Alg. 4: ∇θ and ∇δ from the same backward of ℓ(x+δ); both updates use (θ_t, δ_t), so their order is free."""
    adv = tr.adversary
    perturb, nb, a = adv.perturbations(x.shape[0], tr.step_i, gen)
    P = adv.pool.detach().clone().requires_grad_(True)                       # (m,C,H,W)
    logits = tr.fwd(tr.net, apply(x, perturb(P)))
    loss = tr.loss(logits, y)
    tr.backward(loss)                                                        # one backward: ∇θ and ∇δ
    assert P.grad is not None
    adv.ascend(P.grad, tr.world)
    rec = {"acc_before": accuracy(logits.detach(), y)}                           # θ_old, δ_old: free
    if track:
        rec["acc_after"] = tr.probe(x, y, perturb(adv.pool.detach()))       # θ_old, δ_new
    tr.opt.step()
    adv.record_losses(logits.detach(), y, nb, a)
    rec["delta_norm"] = adv.ball.size(adv.pool.detach())
    return _finish(tr, loss, logits, y, rec)


STEPS = {"natural": natural, "uat": uat, "lowcost": lowcost, "fgsm": fgsm, "pgd": pgd}


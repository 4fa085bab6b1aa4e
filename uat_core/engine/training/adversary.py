"""The training-time adversary of Alg. 3 and 4: a pool of m universal perturbations (m = 1 is the paper's single δ),
the share of each minibatch that carries fixed bank patterns instead, and the re-seeding of the weakest member.

    pool      (m,C,H,W) pixel units, inside the ball; member 0 starts at δ = 0, members 1..m−1 at random ±ε signs
    assign    image b of step t carries member (b + t) mod m (m = 1: every image carries δ, broadcast)
    ascend    every member takes the update rule's step on the gradient of its own images (constraints.Update)
    reseed    every k steps, n candidates (bank patterns and random signs at ±ε) are scored with the weakest member
              on a slice of the minibatch in one forward; the member becomes the best candidate when that beats it

The update rules (``TrainConfig.delta_rule``): ``fgsm`` is the sign rule with τ = ε (paper eq. 6), ``sgd`` τδ·g
(eq. 7; with a pool τδ·m, since a member's rows of the gradient of the mean are 1/m of its own mean), ``adam``
(m = 1 only: one ADAM state).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..attacks.bank import pattern_bank
from ..constraints import Ball, Update, apply
from .config import TrainConfig


def step_seed(seed: int, epoch: int, i: int, rank: int) -> int:
    """Seed of the random draws of step i of an epoch on a rank (a fixed mix, the same on every run)."""
    return (((seed * 1_000_003 + epoch) * 1_000_033 + i) * 1_009 + rank) % (2 ** 63)


RULES = {"fgsm": "sign", "sgd": "sgd", "adam": "adam"}      # TrainConfig.delta_rule -> constraints.Update rule


class Adversary:
    """The pool of universal δs of a ``uat`` / ``lowcost`` run, its update rule and its re-seeding."""

    def __init__(self, cfg: TrainConfig, shape: tuple[int, ...], device: torch.device):
        self.cfg = cfg
        self.ball = Ball(cfg.eps, cfg.norm)
        self.eps = self.ball.eps
        m = cfg.delta_pool
        self.pool = torch.zeros((m, *shape), device=device)                 # (m,C,H,W)
        if m > 1:                                     # members 1..m−1 start at random ±ε signs (seeded)
            g = torch.Generator().manual_seed(cfg.seed * 7_919 + 17)
            signs = torch.randint(0, 2, self.pool[1:].shape, generator=g).float() * 2 - 1
            self.pool[1:] = self.ball.project(signs.to(device) * self.eps, stacked=True)
        self.delta = self.pool[0]                                          # (C,H,W) a view: the paper's δ
        rule = RULES[cfg.delta_rule]
        tau = self.eps if rule == "sign" else cfg.delta_lr / 255.0 * (m if rule == "sgd" else 1)
        self.update = Update(rule, self.pool, tau, self.ball, stacked=m > 1)
        self.member = 0                               # the member a re-seed compares against
        self.loss = torch.full((m,), float("nan"))    # last training loss per member
        self.reseeds = {"proposed": 0, "accepted": 0}
        self._bank: torch.Tensor | None = None

    # ---- which δ each image carries ------------------------------------------------------------
    def bank_tensor(self) -> torch.Tensor:
        """(M,C,H,W) the structured bank at ±ε (no random draws), built once on first use."""
        if self._bank is None:
            self._bank = pattern_bank(tuple(self.pool.shape[1:]), self.eps, random=0).patterns
        return self._bank

    def perturbations(self, B: int, step: int, gen: torch.Generator):
        """(perturb, nb, a): ``perturb(P)`` gives the δ of each of the B images from a pool P (m,C,H,W): the
        first nb (the bank share; the batch is in random order) carry fixed bank patterns drawn with ``gen``, the
        rest member a[b] = (b + step) mod m. With m = 1 and no bank share every image carries P[0], broadcast:
        the paper's Alg. 3 / 4 exactly."""
        c = self.cfg
        nb = min(B - 1, int(c.bank_share * B))
        if c.delta_pool == 1 and nb == 0:
            return (lambda P: P[0]), 0, torch.zeros(B, dtype=torch.long, device=self.pool.device)
        fixed = None
        if nb:
            bank = self.bank_tensor()
            fixed = bank[torch.randint(0, len(bank), (nb,), generator=gen)].to(self.pool.device)   # (nb,C,H,W)
        a = (torch.arange(B - nb, device=self.pool.device) + step) % c.delta_pool              # (B−nb,)

        def perturb(P):                                                  # (B,C,H,W) one δ per image
            return P[a] if fixed is None else torch.cat([fixed, P[a]])
        return perturb, nb, a

    # ---- updates -----------------------------------------------------------------------------
    def ascend(self, g: torch.Tensor, world: int) -> None:
        """Every member takes its step on g (m,C,H,W), E∇ averaged across processes, then the projection."""
        if world > 1:
            dist.all_reduce(g)
            g /= world
        if not torch.isfinite(g).all():
            raise FloatingPointError("delta gradient")
        self.update.step(self.pool, g)

    @torch.no_grad()
    def record_losses(self, logits: torch.Tensor, y: torch.Tensor, nb: int, a: torch.Tensor) -> None:
        """Each member's mean cross-entropy on its images of this step (free: the training forward's logits)."""
        m = self.cfg.delta_pool
        per = F.cross_entropy(logits, y, reduction="none")[nb:]               # the pool's images
        tot = torch.zeros(m, device=per.device).index_add_(0, a, per)
        cnt = torch.zeros(m, device=per.device).index_add_(0, a, torch.ones_like(per))
        used = cnt > 0
        self.loss[used.cpu()] = (tot[used] / cnt[used]).cpu()

    def weakest(self) -> int:
        """The member of lowest last training loss (never-used members first)."""
        if self.cfg.delta_pool == 1:
            return 0
        return int(torch.nan_to_num(self.loss, nan=-math.inf).argmin())

    def strongest(self) -> torch.Tensor:
        """(C,H,W) cpu: the member of highest last training loss (m = 1: δ), the run's universal δ."""
        j = 0 if torch.isnan(self.loss).all() else int(torch.nan_to_num(self.loss, nan=-1.0).argmax())
        return self.pool[j].detach().cpu().clone()

    # ---- re-seeding --------------------------------------------------------------------------------
    def candidates(self, epoch: int, i: int) -> torch.Tensor:
        """(n,C,H,W) re-seed candidates at ±ε (projected into the ball), the same on every rank (seeded by step,
        not rank)."""
        c = self.cfg
        g = torch.Generator().manual_seed(step_seed(c.seed, epoch, i, 10_007))
        n, shape = c.reseed_candidates, tuple(self.pool.shape[1:])
        rand = (torch.randint(0, 2, (n, *shape), generator=g).float() * 2 - 1) * self.eps
        if c.reseed_from != "random":
            bank = self.bank_tensor()
            idx = torch.randint(0, len(bank), (n,), generator=g)
            use_bank = torch.rand(n, generator=g) < 0.75                                  # 3 in 4 structured
            rand = torch.where(use_bank[:, None, None, None], bank[idx], rand)
        return self.ball.project(rand, stacked=True) if self.ball.norm != "linf" else rand

    @torch.no_grad()
    def reseed(self, score, x: torch.Tensor, y: torch.Tensor, epoch: int, i: int, world: int) -> None:
        """Score n candidates and the weakest member on one slice of the minibatch in one forward (``score``:
        the trainer's forward with BatchNorm statistics kept; no backward); that member becomes the candidate
        of highest mean CE when that beats it."""
        self.member = j = self.weakest()
        target = self.pool[j]                                                        # (C,H,W) a view
        cand = self.candidates(epoch, i).to(self.pool.device)                        # (n,C,H,W)
        allp = torch.cat([target.detach()[None], cand])                             # (n+1,C,H,W)
        k = allp.shape[0]
        s = max(1, x.shape[0] // k)
        xs, ys = x[:s], y[:s]                                                        # (s,C,H,W), (s,)
        batch = apply(xs[None].expand(k, *xs.shape).reshape(k * s, *xs.shape[1:]),
                      allp[:, None].expand(k, s, *xs.shape[1:]).reshape(k * s, *xs.shape[1:]))
        logits = score(batch)                                                        # (k·s, classes)
        loss = F.cross_entropy(logits, ys.repeat(k), reduction="none").view(k, s).mean(1)   # (k,)
        if world > 1:
            dist.all_reduce(loss)
        self.reseeds["proposed"] += 1
        best = int(loss[1:].argmax()) + 1
        if loss[best] > loss[0]:
            self.reseeds["accepted"] += 1
            target.copy_(allp[best])
            self.loss[j] = float(loss[best]) / max(1, world)
            self.update.reset()                        # a fresh start: ADAM's moments begin again

"""Alg. 2 of Shafahi et al., "Universal Adversarial Training" (AAAI 2020), https://arxiv.org/abs/1811.11304

Stochastic gradient *ascent* on one perturbation δ (C,H,W), shared by every image, maximising the
clipped cross-entropy (eq. 3)

    max_δ  1/N Σ_i min( CE(f(x_i + δ), y_i), β )   subject to ‖δ‖ ≤ ε,

one minibatch at a time, each step followed by the projection onto the ε-ball.

Norm: ℓ∞ (default) or ℓ2.  Optimizers (the update rule; the projection is separate, see constraints.py):
    pgd   δ ← δ + τ·sign(g)              (sign gradient; the paper's default)   τ in 0-255 units
    sgd   δ ← δ + τ·g                     τ in 0-255 units per unit gradient
    msgd  SGD with momentum 0.9 on δ      τ as for sgd
    adam  ADAM ascent on δ                τ in 0-255 units (ADAM's steps are about τ per pixel)
  (for ℓ2, pgd steps along g/‖g‖₂ with length τ).
The weights stay frozen: each step costs one forward and one input-gradient backward.

Several processes (``group``, a :class:`uat_core.engine.distributed.Group`, under ``torchrun``): global minibatch b of
an epoch is ``order[b·B·N:(b+1)·B·N]`` of the epoch's permutation (the same on every rank) and rank r takes
the r-th block of B, as the training loop does; each rank sums the gradient and the objective of its images,
one all-reduce adds them up and the sum is divided by the minibatch's image count. Every rank then takes
the step one process takes with batch B·N (the same images, the same mean of min(CE, β): equal to float
tolerance, the sums being added in another order) and holds the same δ.

Example::

    cfg = AttackConfig(eps=8, beta=9, optimizer="pgd", epochs=10)
    run = UniversalAttack(model, x_train, y_train, cfg)      # x: (N,C,H,W) float in [0,1]
    result = run.run(progress=True)                         # or: for event in run: ...
    result.delta                                           # (C,H,W) pixel units, ‖δ‖∞ ≤ 8/255
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from ..batches import shuffled_blocks
from ..constraints import Ball, Update, apply, check_norm, norm_of, project
from ..errors import UATError
from ..events import Event, Run, check_finite
from ..losses import attack_objective
from ..models import frozen

OPTIMIZERS = ("sgd", "msgd", "pgd", "adam")

# Default step size τ per optimizer as a multiple of ε (τ = DEFAULT_STEP[opt] · ε, 0-255 units; see the
# docstring for what τ means for each). pgd/adam reach the boundary of the ball in ~10 steps; sgd/msgd
# factors were chosen on this project's digits models (0-255 units per unit gradient of the mean loss).
DEFAULT_STEP = {"pgd": 0.1, "adam": 0.1, "sgd": 250.0, "msgd": 25.0}
SCHEDULES = ("constant", "cosine")


@dataclass
class AttackConfig:
    eps: float = 8.0              # ‖δ‖ ≤ ε, in 0-255 units (ℓ∞); for ℓ2 the radius in the same units
    beta: float = 9.0             # clip of the per-image CE; math.inf = plain CE
    optimizer: str = "pgd"        # sgd | msgd | pgd | adam
    norm: str = "linf"            # linf | l2
    step_size: float | None = None  # τ in 0-255 units; None = DEFAULT_STEP[optimizer] · eps
    step_decay: float = 1.0       # τ multiplied by this after every epoch (1 = constant)
    schedule: str = "constant"    # constant (τ, times step_decay per epoch) | cosine (τ → 0 over the run, per step)
    epochs: int = 10              # passes over the attack set
    batch_size: int = 128
    target: int | None = None     # class to push every image to (targeted); None = untargeted
    seed: int = 0                 # shuffling order of the attack set and any random init
    snapshot_every: int = 10      # a δ snapshot in the event stream every k steps (0 = only the last)

    def validate(self) -> "AttackConfig":
        if not (0 < self.eps <= 255):
            raise UATError(f"eps must be in (0, 255] (0-255 pixel units), got {self.eps}")
        if not (self.beta > 0):
            raise UATError(f"beta must be > 0 (use inf for no clipping), got {self.beta}")
        if self.optimizer not in OPTIMIZERS:
            raise UATError(f"unknown optimizer '{self.optimizer}': choose {', '.join(OPTIMIZERS)}")
        check_norm(self.norm)
        if self.step_size is not None and not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise UATError(f"step size must be a positive number, got {self.step_size}")
        if self.schedule not in SCHEDULES:
            raise UATError(f"unknown step schedule '{self.schedule}': choose {' or '.join(SCHEDULES)}")
        if not (0 < self.step_decay <= 1):
            raise UATError(f"step decay must be in (0, 1], got {self.step_decay}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UATError("epochs and batch size must be at least 1")
        if self.snapshot_every < 0:
            raise UATError(f"snapshot interval must be ≥ 0 (0 = only the last), got {self.snapshot_every}")
        return self

    @property
    def tau(self) -> float:
        """τ in 0-255 units."""
        return self.step_size if self.step_size is not None else DEFAULT_STEP[self.optimizer] * self.eps

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttackResult:
    delta: torch.Tensor                 # (C,H,W) on the CPU, pixel units
    history: list[dict]                 # one dict per step: step, epoch, loss, acc, tau, norm
    snapshots: list[tuple[int, torch.Tensor]] = field(default_factory=list)   # (step, δ)
    seconds: float = 0.0
    steps: int = 0
    stopped_early: bool = False
    config: dict = field(default_factory=dict)
    best_fixed: torch.Tensor | None = None  # strong attack: the best fixed bank pattern (the baseline), (C,H,W)


def attack_set(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device=None):
    """(device, x, y) of an attack on ``model``: x (N,C,H,W) float in [0,1] (uint8 images scaled), y (N,), both
    on ``device`` (default: the model's). Refuses an empty set. Shared by every universal attack."""
    if images.ndim != 4 or len(images) == 0:
        raise UATError("the attack set is empty")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if images.dtype == torch.uint8:
        images = images.float().div_(255)
    return device, images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


class UniversalAttack(Run):
    """Alg. 2 as a stream of events; see the module docstring."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 config: AttackConfig | None = None, device: str | torch.device | None = None,
                 delta_init: torch.Tensor | None = None, group=None):
        super().__init__()
        self.cfg = (config or AttackConfig()).validate()
        self.model = model
        self.device, self.x, self.y = attack_set(model, images, labels, device)   # (N,C,H,W) in [0,1], (N,)
        self.eps = self.cfg.eps / 255.0
        self.delta = torch.zeros(self.x.shape[1:], device=self.device)   # (C,H,W)
        if delta_init is not None:
            self.delta = project(delta_init.to(self.device).float(), self.eps, self.cfg.norm)
        self.group = group if group is not None and group.world > 1 else None   # torchrun: N processes
        self.world = self.group.world if self.group is not None else 1
        if len(self.x) < self.world:
            raise UATError(f"the attack set ({len(self.x)} images) is smaller than the {self.world} processes")
        self.steps_per_epoch = math.ceil(len(self.x) / (self.cfg.batch_size * self.world))
        self.total = self.cfg.epochs * self.steps_per_epoch
        self.snapshots: list[tuple[int, torch.Tensor]] = []

    # ---- the update rule (constraints.Update: the same rules as the training-time δ) -----------
    RULE = {"pgd": "sign", "sgd": "sgd", "msgd": "momentum", "adam": "adam"}    # optimizer name -> Update rule

    def _shared_step(self, model, x, y, delta):
        """Under torchrun: (g, loss, acc, target rate) of the global minibatch whose block (x, y) this rank
        holds (possibly empty), from one all-reduce of the sums of every rank's block."""
        cfg = self.cfg
        if len(y):
            logits = model(apply(x, delta))                                     # (b,K)
            per = attack_objective(logits, y, cfg.beta, cfg.target, reduction="none")   # (b,)
            g, = torch.autograd.grad(per.sum(), delta)                          # (C,H,W) Σ_block ∇δ
            pred = logits.detach().argmax(1)
            hits = (pred == cfg.target) if cfg.target is not None else torch.zeros_like(pred, dtype=torch.bool)
            stats = torch.stack([per.detach().sum(), (pred == y).sum().float(), hits.sum().float(),
                                 (~torch.isfinite(logits.detach())).sum().float(),
                                 torch.tensor(float(len(y)), device=delta.device)])   # exact counts in float32
        else:                                                                   # the epoch's last, short batch
            g, stats = torch.zeros_like(delta), torch.zeros(5, device=delta.device)
        total = self.group.sum(torch.cat([g.detach().flatten(), stats]))
        g, (loss, correct, hits, bad, n) = total[:-5].view_as(delta), total[-5:].tolist()
        if bad:                                                     # every rank stops here, with the same line
            check_finite(torch.tensor(math.nan), "the model's output (a broken checkpoint?)")
        n32 = torch.tensor(n)                                       # float32 ratios, as one process's .mean()
        return (g / n, abs(loss / n), (torch.tensor(correct) / n32).item(),
                (torch.tensor(hits) / n32).item())

    # ---- the loop ---------------------------------------------------------------------------
    def _steps(self):
        cfg, t0 = self.cfg, time.perf_counter()
        gen = torch.Generator().manual_seed(cfg.seed)
        delta = self.delta.clone().requires_grad_(True)
        tau = cfg.tau / 255.0
        update = Update(self.RULE[cfg.optimizer], delta, tau, Ball(cfg.eps, cfg.norm))
        step = 0
        B, rank = cfg.batch_size, self.group.rank if self.group is not None else 0
        with frozen(self.model) as model:
            for epoch in range(cfg.epochs):
                for idx in shuffled_blocks(len(self.x), B, gen, self.steps_per_epoch, self.world, rank,
                                           self.device):                  # this rank's block of each batch
                    x, y = self.x[idx], self.y[idx]                        # (B,C,H,W), (B,)
                    if self.group is None:
                        logits = model(apply(x, delta))                    # (B,K)
                        loss = attack_objective(logits, y, cfg.beta, cfg.target)
                        g, = torch.autograd.grad(loss, delta)              # (C,H,W) = E_batch ∇δ
                        if not torch.isfinite(logits).all():               # say which: model or step
                            check_finite(logits, "the model's output (a broken checkpoint?)")
                        pred = logits.argmax(1)
                        loss_v, acc = abs(loss.item()), (pred == y).float().mean().item()
                        hit = (pred == cfg.target).float().mean().item() if cfg.target is not None else None
                    else:
                        g, loss_v, acc, hit = self._shared_step(model, x, y, delta)
                    check_finite(g, "the gradient of the attack loss")
                    if cfg.schedule == "cosine":           # τ_s = τ0 · ½(1 + cos(π s / S)), s = 0 … S−1
                        tau = cfg.tau / 255.0 * 0.5 * (1 + math.cos(math.pi * step / self.total))
                        update.set_tau(tau)
                    update.step(delta, g)                                  # δ ← P(δ + update(g))
                    self.delta = delta.detach()
                    step += 1
                    rec = {"step": step, "epoch": epoch, "loss": loss_v, "acc": acc,
                           "tau": tau * 255.0, "norm": norm_of(self.delta, cfg.norm) * 255.0}
                    if cfg.target is not None:
                        rec["target_rate"] = hit
                    self.history.append(rec)
                    snap = None
                    if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                        snap = self.delta.cpu().clone()
                        self.snapshots.append((step, snap))
                    yield Event("step", step, self.total, epoch, rec, snap)
                    if self.stopping:
                        break
                if self.stopping:
                    break
                tau *= cfg.step_decay
                update.set_tau(tau)
                yield Event("epoch", step, self.total, epoch, {"loss": self.history[-1]["loss"]})
        final = self.delta.cpu().clone()
        if not self.snapshots or self.snapshots[-1][0] != step:
            self.snapshots.append((step, final))
        config = cfg.to_dict()
        if self.group is not None:            # every rank took the same steps: their δs are equal (0 spread)
            config.update(world_size=self.world, rank_spread=float(
                (self.group.max(self.delta) - self.group.min(self.delta)).abs().max()) * 255.0)
        self.result = AttackResult(final, self.history, self.snapshots, time.perf_counter() - t0, step,
                                   self.stopping, config)
        yield Event("done", step, self.total, cfg.epochs - 1, {}, final, self.result)


def universal_attack(model, images, labels, config: AttackConfig | None = None, **kw) -> AttackResult:
    """Run Alg. 2 to the end (see :class:`UniversalAttack`)."""
    progress = kw.pop("progress", False)
    callback = kw.pop("callback", None)
    return UniversalAttack(model, images, labels, config, **kw).run(callback, progress, "Alg. 2")

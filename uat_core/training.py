"""Training: natural, universal adversarial training (Alg. 3 and 4) and per-instance FGSM/PGD baselines.

    natural   θ ← θ − α∇θ ℓ(x)                                          1 forward, 1 backward
    uat       Alg. 3: θ ← θ − α∇θ ℓ(x+δ); then δ ← P(δ + ε·sign(E∇δ ℓ(x+δ)))   2 forward, 2 backward
              (the second backward is for the input only: weights frozen, so it is cheap)
    lowcost   Alg. 4: ∇θ and ∇δ from ONE backward of ℓ(x+δ); then both updates     1 forward, 1 backward
    fgsm      per-instance FGSM training: x' = x + ε·sign(∇x ℓ(x)), train on x'  2 forward, 2 backward
    pgd       per-instance PGD-K with random start (Madry et al. 2018)          K+1 forward, K+1 backward

δ is universal: one (C,H,W) tensor carried across minibatches and epochs, in pixel units. Its update
rule (``delta_rule``) is ``fgsm`` (paper eq. 6, δ += ε·sign(g)), ``sgd`` (eq. 7, δ += τδ·g) or ``adam``.
Weights use momentum SGD with weight decay; the learning rate follows the paper's shape (÷10 at 50% and
75% of the steps) unless ``schedule`` says otherwise.

The :class:`Trainer` is a :class:`~uat_core.events.Run`: iterate it for events, ``stop()`` it, or
``run()`` it. Checkpoints hold weights, optimizer, scheduler, δ and the step, so ``resume`` continues
a run exactly. Under ``torchrun`` it uses DistributedDataParallel (gloo on CPU, NCCL on GPUs); the δ
gradient is all-reduced so every rank holds the same δ; only rank 0 writes.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .augment import crop_flip
from .constraints import apply, norm_of, project, random_start
from .errors import UATError
from .events import Event, Run

ALGORITHMS = ("natural", "uat", "lowcost", "fgsm", "pgd")
DELTA_RULES = ("fgsm", "sgd", "adam")
SCHEDULES = ("step", "onecycle", "cosine", "constant")


@dataclass
class TrainConfig:
    algorithm: str = "natural"     # natural | uat | lowcost | fgsm | pgd
    epochs: int = 10
    batch_size: int = 128          # per process
    lr: float = 0.1                # peak learning rate of the weights
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"         # step (÷10 at 50% and 75%) | onecycle | cosine | constant
    augment: bool = True           # random crop (pad 4) + horizontal flip
    flip: bool = True              # horizontal flip as part of augment (off for digits)
    eps: float = 8.0               # ε of δ (uat/lowcost) or of per-instance attacks, 0-255 units
    delta_rule: str = "fgsm"       # fgsm | sgd | adam: the update of the universal δ
    delta_lr: float = 1.0          # τδ for sgd (0-255 units per unit gradient) or adam (0-255 units)
    pgd_steps: int = 7             # K for --algorithm pgd
    pgd_step_size: float | None = None   # α in 0-255 units; None = 2.5·ε/K
    track_every: int = 10          # uat/lowcost: "after ascent" accuracy every k steps (0 = never)
    snapshot_every: int = 50       # a δ snapshot in the event stream every k steps
    seed: int = 0
    amp: bool = False              # CUDA only: bfloat16 autocast
    channels_last: bool = False    # CUDA only

    def validate(self) -> "TrainConfig":
        if self.algorithm not in ALGORITHMS:
            raise UATError(f"unknown algorithm '{self.algorithm}': choose {', '.join(ALGORITHMS)}")
        if self.delta_rule not in DELTA_RULES:
            raise UATError(f"unknown update rule '{self.delta_rule}': choose {', '.join(DELTA_RULES)}")
        if self.schedule not in SCHEDULES:
            raise UATError(f"unknown schedule '{self.schedule}': choose {', '.join(SCHEDULES)}")
        if self.algorithm != "natural" and not (0 < self.eps <= 255):
            raise UATError(f"eps must be in (0, 255] (0-255 pixel units), got {self.eps}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not (0 <= self.momentum < 1) or self.weight_decay < 0:
            raise UATError("lr must be > 0, momentum in [0, 1), weight decay ≥ 0")
        if not (self.delta_lr > 0 and math.isfinite(self.delta_lr)):
            raise UATError(f"delta lr must be > 0, got {self.delta_lr}")
        if self.pgd_steps < 1 or (self.pgd_step_size is not None and not self.pgd_step_size > 0):
            raise UATError("pgd steps must be ≥ 1 and the PGD step size > 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise UATError("epochs and batch size must be at least 1")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# Settings that must match for --resume to continue the same run.
RESUME_KEYS = ("algorithm", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "augment",
               "flip", "eps", "delta_rule", "delta_lr", "pgd_steps", "pgd_step_size", "seed")


@dataclass
class TrainResult:
    model: torch.nn.Module
    delta: torch.Tensor | None
    history: list[dict]
    seconds: float
    steps: int
    epochs_done: int
    passes: dict = field(default_factory=dict)
    stopped_early: bool = False


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer(Run):
    """Train ``model`` (a Normalized classifier) on ``train`` (an ImageData) with ``config``."""

    def __init__(self, model, train, config: TrainConfig, device=None, resume_state: dict | None = None,
                 checkpoint_fn=None):
        super().__init__()
        self.cfg = config.validate()
        if len(train) == 0:
            raise UATError("the training set is empty")
        self.rank, self.world = _world()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.data = train
        self.model = model.to(self.device)
        if self.cfg.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self.model                        # what we call forward on (DDP-wrapped under torchrun)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.eps = self.cfg.eps / 255.0
        n_local = len(train) // self.world
        self.steps_per_epoch = max(1, n_local // self.cfg.batch_size)     # full batches only
        self.total = self.cfg.epochs * self.steps_per_epoch
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum,
                                   weight_decay=self.cfg.weight_decay, nesterov=self.cfg.momentum > 0)
        self.sched = self._scheduler()
        self.delta = torch.zeros(train.shape, device=self.device)           # (C,H,W) universal δ
        self.delta_opt = None
        if self.cfg.algorithm in ("uat", "lowcost") and self.cfg.delta_rule == "adam":
            self.delta.requires_grad_(True)
            self.delta_opt = torch.optim.Adam([self.delta], lr=self.cfg.delta_lr / 255.0, maximize=True)
        self.passes = {"forward": 0, "backward": 0}
        self.step_i, self.epoch_i, self.seconds = 0, 0, 0.0
        self.snapshots: list[tuple[int, torch.Tensor]] = []
        self.checkpoint_fn = checkpoint_fn            # called as fn(trainer) after every epoch (rank 0)
        self.last_good: dict | None = None
        if resume_state:
            self.load_state(resume_state)

    # ---- state for checkpoints / resume --------------------------------------------------------
    def _scheduler(self):
        T, c = self.total, self.cfg
        if c.schedule == "step":
            return torch.optim.lr_scheduler.MultiStepLR(self.opt, [int(0.5 * T), int(0.75 * T)], 0.1)
        if c.schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(self.opt, c.lr, total_steps=T, pct_start=0.25,
                                                       anneal_strategy="linear")
        if c.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T)
        return torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)

    def state(self) -> dict:
        st = {"config": self.cfg.to_dict(), "optimizer": self.opt.state_dict(),
              "scheduler": self.sched.state_dict(), "delta": self.delta.detach().cpu().clone(),
              "step": self.step_i, "epoch": self.epoch_i, "seconds": self.seconds, "passes": dict(self.passes),
              "history": list(self.history)}
        if self.delta_opt is not None:
            st["delta_optimizer"] = self.delta_opt.state_dict()
        return st

    def load_state(self, st: dict) -> None:
        old = st.get("config", {})
        diff = [k for k in RESUME_KEYS if old.get(k) != getattr(self.cfg, k)]
        if diff:
            k = diff[0]
            raise UATError(f"cannot resume: the checkpoint was trained with {k}={old.get(k)!r}, "
                           f"not {getattr(self.cfg, k)!r}")
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        with torch.no_grad():
            self.delta.copy_(st["delta"].to(self.device))
        if self.delta_opt is not None and "delta_optimizer" in st:
            self.delta_opt.load_state_dict(st["delta_optimizer"])
        self.step_i, self.epoch_i = int(st["step"]), int(st["epoch"])
        self.seconds, self.passes = float(st["seconds"]), dict(st["passes"])
        self.history = list(st["history"])

    # ---- one step per algorithm ------------------------------------------------------------------
    def _fwd(self, net, x):
        self.passes["forward"] += 1
        if self.cfg.amp and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return net(x).float()
        return net(x)

    def _weights_step(self, loss):
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.passes["backward"] += 1

    def _input_grad(self, x, y, delta=None):
        """∇ of the mean CE w.r.t. x (per-instance) or δ (universal), weights frozen, BN in train mode."""
        m = self.model
        flags = [p.requires_grad_(False) for p in m.parameters()]
        try:
            if delta is None:
                x = x.detach().requires_grad_(True)
                loss = F.cross_entropy(self._fwd(m, x), y)
                g, = torch.autograd.grad(loss, x)
            else:
                d = delta.detach().requires_grad_(True)
                loss = F.cross_entropy(self._fwd(m, apply(x, d)), y)
                g, = torch.autograd.grad(loss, d)
        finally:
            for p in m.parameters():
                p.requires_grad_(True)
        self.passes["backward"] += 1
        del flags
        return g

    def _ascend(self, g):
        """δ ← P(δ + update(g)); g = E∇δ ℓ, all-reduced across processes."""
        if self.world > 1:
            dist.all_reduce(g)
            g /= self.world
        if not torch.isfinite(g).all():
            raise FloatingPointError("delta gradient")
        c = self.cfg
        with torch.no_grad():
            if c.delta_rule == "fgsm":
                self.delta.add_(g.sign(), alpha=self.eps)
            elif c.delta_rule == "sgd":
                self.delta.add_(g, alpha=c.delta_lr / 255.0)
            else:
                self.delta.grad = g
                self.delta_opt.step()
            self.delta.copy_(project(self.delta, self.eps, "linf"))

    def _step(self, x, y, gen) -> dict:
        c, net = self.cfg, self.net
        rec = {}
        if c.algorithm == "natural":
            logits = self._fwd(net, x)
            loss = F.cross_entropy(logits, y)
            self._weights_step(loss)
            self.opt.step()
        elif c.algorithm == "uat":                                        # Alg. 3
            d = self.delta.detach()
            logits = self._fwd(net, apply(x, d))
            loss = F.cross_entropy(logits, y)
            self._weights_step(loss)
            self.opt.step()
            g = self._input_grad(x, y, d)                                   # with the updated weights
            self._ascend(g)
        elif c.algorithm == "lowcost":                                    # Alg. 4
            d = self.delta.detach().requires_grad_(True)
            logits = self._fwd(net, apply(x, d))
            loss = F.cross_entropy(logits, y)
            self._weights_step(loss)                                        # one backward: ∇θ and ∇δ
            g = d.grad
            self.opt.step()
            self._ascend(g)
        elif c.algorithm == "fgsm":
            g = self._input_grad(x, y)
            xa = (x + self.eps * g.sign()).clamp(0, 1)
            logits = self._fwd(net, xa)
            loss = F.cross_entropy(logits, y)
            self._weights_step(loss)
            self.opt.step()
        else:                                                             # pgd
            alpha = (c.pgd_step_size / 255.0) if c.pgd_step_size else 2.5 * self.eps / c.pgd_steps
            r = random_start(x.shape, self.eps, "linf", gen, x.device)
            for _ in range(c.pgd_steps):
                g = self._input_grad((x + r).clamp(0, 1), y)
                r = (r + alpha * g.sign()).clamp(-self.eps, self.eps)
            logits = self._fwd(net, (x + r).clamp(0, 1))
            loss = F.cross_entropy(logits, y)
            self._weights_step(loss)
            self.opt.step()
        lv = loss.item()
        if not math.isfinite(lv):
            raise FloatingPointError("loss")
        rec["loss"] = lv
        rec["acc"] = (logits.argmax(1) == y).float().mean().item()
        if c.algorithm in ("uat", "lowcost"):
            rec["acc_before"] = rec["acc"]
            if c.track_every and (self.step_i + 1) % c.track_every == 0:
                with torch.no_grad():
                    rec["acc_after"] = (self.model(apply(x, self.delta.detach())).argmax(1) == y).float().mean().item()
            rec["delta_norm"] = norm_of(self.delta.detach()) * 255.0
        return rec

    # ---- the loop ----------------------------------------------------------------------------------
    def _batches(self, epoch):
        """This rank's shard of the epoch's seeded permutation, in full batches (x float, y)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.data), generator=g)
        order = order[self.rank::self.world][: self.steps_per_epoch * self.cfg.batch_size]
        for i in range(self.steps_per_epoch):
            idx = order[i * self.cfg.batch_size:(i + 1) * self.cfg.batch_size]
            x = self.data.images[idx].to(self.device, non_blocking=True).float().div_(255)
            y = self.data.labels[idx].to(self.device, non_blocking=True)
            if self.cfg.augment:
                x = crop_flip(x, 4, self.cfg.flip, g)
            if self.cfg.channels_last and self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def _steps(self):
        c = self.cfg
        self.model.train()
        start_epoch = self.epoch_i
        self.last_good = self.state() if self.checkpoint_fn else None
        for epoch in range(start_epoch, c.epochs):
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)
            for i, (x, y) in enumerate(self._batches(epoch)):
                if epoch == start_epoch and i < self.step_i - epoch * self.steps_per_epoch:
                    continue                                      # resuming mid-epoch: skip done batches
                try:
                    rec = self._step(x, y, g)
                except FloatingPointError as e:
                    raise UATError(f"training diverged (the {e} became NaN or Inf) at step {self.step_i + 1}: "
                                   "lower --lr; the last good checkpoint is kept") from None
                self.sched.step()
                self.step_i += 1
                rec.update(step=self.step_i, epoch=epoch, lr=self.opt.param_groups[0]["lr"])
                self.history.append(rec)
                snap = None
                if c.algorithm in ("uat", "lowcost") and c.snapshot_every and self.step_i % c.snapshot_every == 0:
                    snap = self.delta.detach().cpu().clone()
                    self.snapshots.append((self.step_i, snap))
                yield Event("step", self.step_i, self.total, epoch, rec, snap)
                if self.stopping:
                    break
            self.seconds += time.perf_counter() - t0
            if self.stopping:
                break
            self.epoch_i = epoch + 1
            if self.checkpoint_fn is not None and self.rank == 0:
                self.checkpoint_fn(self)
            yield Event("epoch", self.step_i, self.total, epoch, {"loss": self.history[-1]["loss"],
                                                                  "seconds": self.seconds})
        self.model.eval()
        delta = self.delta.detach().cpu().clone() if c.algorithm in ("uat", "lowcost") else None
        self.result = TrainResult(self.model, delta, self.history, self.seconds, self.step_i, self.epoch_i,
                                  dict(self.passes), self.stopping)
        yield Event("done", self.step_i, self.total, self.epoch_i, {}, delta, self.result)


def default_config_for(dataset: str, arch: str, **overrides) -> TrainConfig:
    """Sensible defaults per dataset: digits trains without flips and with a smaller lr."""
    kw = {}
    if dataset == "digits":
        kw.update(lr=0.05, flip=False, augment=False, batch_size=64)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kw)

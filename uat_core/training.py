"""Training: natural, universal adversarial training (Alg. 3 and 4) and per-instance FGSM/PGD baselines.

    natural   θ ← θ − α∇θ ℓ(x)                                              1 forward, 1 backward
    uat       Alg. 3: θ ← θ − α∇θ ℓ(x+δ); then δ ← P(δ + ε·sign(E∇δ ℓ(x+δ)))     2 forward, 2 backward
              (the second pass needs only the input gradient: weights frozen, so it is cheap)
    lowcost   Alg. 4: ∇θ and ∇δ from ONE backward of ℓ(x+δ); then both updates   1 forward, 1 backward
    fgsm      per-instance FGSM training: x' = x + ε·sign(∇x ℓ(x)), train on x'   2 forward, 2 backward
              (``fgsm_random_start``: Wong et al. 2020's "fast FGSM", uniform start and step 1.25·ε)
    pgd       per-instance PGD-K with random start (Madry et al. 2018)            K+1 forward, K+1 backward

δ is universal: one (C,H,W) tensor carried across minibatches and epochs, in pixel units. Its update
rule (``delta_rule``) is ``fgsm`` (paper eq. 6, δ += ε·sign(g)), ``sgd`` (eq. 7, δ += τδ·g) or ``adam``.

A single δ settles into one basin and the network learns to ignore *that* δ, not universal perturbations
in general (a fixed ±ε stripe then fools it). Two options keep the adversary of ``uat`` / ``lowcost``
strong and diverse, both off by default (the paper's algorithms):

    delta_pool = m     m universal perturbations in the same passes: image b of a minibatch carries member
                       (b + t) mod m, and every member ascends on the gradient of its own images (the pool
                       costs memory, not passes; one forward and backward still give ∇θ and all m ∇δ)
    bank_share = f     a fraction f of every minibatch carries fixed patterns of the structured bank
                       (stripes, checkerboards, colours at ±ε; a fresh draw per image and step) instead of
                       a pool member, in the same passes: the network also learns to resist the patterns
                       no optimiser of δ reaches (their gradients are not used)
    reseed_every = k   every k steps, ``reseed_candidates`` new starts (``reseed_from``: patterns of the
                       structured bank and random signs, or random signs only) are scored with the pool's
                       weakest member (lowest last loss) on a slice of the minibatch, in one forward without
                       backward; that member becomes the candidate of highest loss when it beats it
Weights use momentum SGD with weight decay; the learning rate follows the paper's shape (÷10 at 50% and
75% of the steps) unless ``schedule`` says otherwise.

Passes that only compute an input gradient (the δ ascent of ``uat``, the attack steps of ``fgsm`` and
``pgd``) run with BatchNorm in training mode (batch statistics, as the training forward sees them) but
leave the running statistics alone, so those track exactly one update per training step.

The :class:`Trainer` is a :class:`~uat_core.events.Run`: iterate it for events, ``stop()`` it, or
``run()`` it. Checkpoints hold weights, optimizer, scheduler, δ and the step; every random draw of a
step (augmentation, random starts) comes from a generator seeded by (seed, epoch, step, rank), so
``resume`` continues a run exactly, even from the middle of an epoch. Under ``torchrun`` it uses
DistributedDataParallel (gloo on CPU, NCCL on GPUs): global batch i is ``order[i·B·W:(i+1)·B·W]`` of the
epoch's permutation and rank r takes the r-th block of B, so a one-process run with batch B·W sees the
same global batches; the δ gradient is all-reduced so every rank holds the same δ; only rank 0 writes.

``train`` is an in-memory ``ImageData`` (minibatches indexed out of its uint8 tensor, augmented on the device
by a random crop after 4-pixel padding and a flip) or a ``stream.FolderStream`` (a folder too large to decode
whole): the same permutation and the same blocks of it, but each minibatch is decoded from disk by the
stream's worker processes a few steps ahead, augmented there by a random-resized-crop and a flip (the
evaluation view without ``augment``), with the draws of image i seeded by (seed, epoch, i). A streamed run
resumes exactly as well: the minibatches before the saved step are skipped without decoding. An image that
does not decode is left out of its minibatch with a warning (a minibatch left empty stops the run).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .augment import crop_flip
from .constraints import apply, norm_of, project, random_start
from .errors import UATError
from .events import Event, Run

ALGORITHMS = ("natural", "uat", "lowcost", "fgsm", "pgd")
DELTA_RULES = ("fgsm", "sgd", "adam")
SCHEDULES = ("step", "onecycle", "cosine", "constant")
UNIVERSAL = ("uat", "lowcost")      # the algorithms that carry a universal δ
RESEED_FROM = ("bank", "random")
# Named variants of the universal algorithms (the zoo, the app and the notebooks train them by these names):
# the paper's Alg. 3 / 4 with a pool of 4 universal δs carried through the same passes.
POOL_SIZE, BANK_SHARE = 4, 0.25
VARIANTS = {"uat_pool": ("uat", {"delta_pool": POOL_SIZE, "bank_share": BANK_SHARE}),
            "lowcost_pool": ("lowcost", {"delta_pool": POOL_SIZE, "bank_share": BANK_SHARE})}


def resolve_variant(name: str) -> tuple[str, dict]:
    """(algorithm, TrainConfig overrides) of an algorithm or a named variant such as "uat_pool"."""
    return VARIANTS.get(name, (name, {}))


@dataclass
class TrainConfig:
    algorithm: str = "natural"     # natural | uat | lowcost | fgsm | pgd
    epochs: int = 10
    batch_size: int = 128          # per process
    lr: float = 0.1                # peak learning rate of the weights
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0   # ε_ls of the weights' cross-entropy (Szegedy et al. 2016); 0 = none
    schedule: str = "step"         # step (÷10 at 50% and 75%) | onecycle | cosine | constant
    augment: bool = True           # random crop (pad 4) + horizontal flip (streamed data: random-resized-crop + flip)
    flip: bool = True              # horizontal flip as part of augment (off for digits)
    eps: float = 8.0               # ε of δ (uat/lowcost) or of per-instance attacks, 0-255 units
    delta_rule: str = "fgsm"       # fgsm | sgd | adam: the update of the universal δ
    delta_lr: float = 1.0          # τδ for sgd (0-255 units per unit gradient) or adam (0-255 units)
    pgd_steps: int = 7             # K for --algorithm pgd
    pgd_step_size: float | None = None   # α in 0-255 units; None = 2.5·ε/K
    fgsm_random_start: bool = False      # fgsm: uniform start in the ε-ball and step 1.25·ε (Wong et al.)
    delta_pool: int = 1            # uat/lowcost: m universal δs used in turn (1 = the paper's single δ)
    reseed_every: int = 0          # uat/lowcost: propose new starts every k steps (0 = never, the paper's)
    reseed_from: str = "bank"      # bank (structured patterns + random signs) | random (random signs)
    reseed_candidates: int = 7     # candidates scored per re-seed, with the active member, in one forward
    bank_share: float = 0.0        # uat/lowcost: fraction of each minibatch carrying random bank patterns
    track_every: int = 20          # uat/lowcost: "after ascent" accuracy every k steps (0 = never)
    snapshot_every: int = 50       # a δ snapshot in the event stream every k steps (0 = never)
    seed: int = 0
    amp: bool = False              # CUDA only: bfloat16 autocast
    channels_last: bool = False    # CUDA only

    def validate(self) -> "TrainConfig":
        """Raise a one-line UATError for any setting out of range; return self."""
        if self.algorithm not in ALGORITHMS:
            raise UATError(f"unknown algorithm '{self.algorithm}': choose {', '.join(ALGORITHMS)}")
        if self.delta_rule not in DELTA_RULES:
            raise UATError(f"unknown update rule '{self.delta_rule}': choose {', '.join(DELTA_RULES)}")
        if self.schedule not in SCHEDULES:
            raise UATError(f"unknown schedule '{self.schedule}': choose {', '.join(SCHEDULES)}")
        if not (0 < self.eps <= 255):              # also the robustness report's default ε
            raise UATError(f"eps must be in (0, 255] (0-255 pixel units), got {self.eps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UATError(f"lr must be a number > 0, got {self.lr}")
        if not (0 <= self.momentum < 1) or not (0 <= self.weight_decay < 1):
            raise UATError(f"momentum must be in [0, 1) and weight decay in [0, 1), got {self.momentum} "
                           f"and {self.weight_decay}")
        if not (self.delta_lr > 0 and math.isfinite(self.delta_lr)):
            raise UATError(f"delta lr must be a number > 0, got {self.delta_lr}")
        if self.delta_rule == "adam" and self.delta_lr > 255:
            raise UATError(f"delta lr of the adam rule is a step in 0-255 units: at most 255, got {self.delta_lr}")
        if not (0.0 <= self.label_smoothing < 1.0):
            raise UATError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.pgd_steps < 1:
            raise UATError(f"pgd steps must be at least 1, got {self.pgd_steps}")
        if self.pgd_step_size is not None and not (0 < self.pgd_step_size <= 255):
            raise UATError(f"the PGD step size must be in (0, 255] (0-255 units), got {self.pgd_step_size}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UATError(f"epochs and batch size must be at least 1, got {self.epochs} and {self.batch_size}")
        if self.delta_pool < 1:
            raise UATError(f"the delta pool needs at least 1 perturbation, got {self.delta_pool}")
        if self.reseed_every < 0:
            raise UATError(f"the re-seed interval must be at least 1 step (0 = never), got {self.reseed_every}")
        if self.reseed_from not in RESEED_FROM:
            raise UATError(f"unknown re-seed strategy '{self.reseed_from}': choose {', '.join(RESEED_FROM)}")
        if self.reseed_candidates < 1:
            raise UATError(f"re-seed candidates must be at least 1, got {self.reseed_candidates}")
        if not (0.0 <= self.bank_share < 1.0):
            raise UATError(f"the bank share is a fraction of the minibatch in [0, 1), got {self.bank_share}")
        if self.bank_share > 0 and self.delta_rule == "adam":
            raise UATError("a bank share works with the fgsm or sgd delta rule, not adam")
        if self.delta_pool > 1 and self.delta_rule == "adam":
            raise UATError("a delta pool works with the fgsm or sgd delta rule, not adam (one Adam state per δ)")
        if self.track_every < 0 or self.snapshot_every < 0:
            raise UATError("track-every and snapshot-every must be ≥ 0 (0 = never)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# Settings that must match for --resume to continue the same run.
RESUME_KEYS = ("algorithm", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "augment",
               "flip", "eps", "delta_rule", "delta_lr", "pgd_steps", "pgd_step_size", "fgsm_random_start",
               "delta_pool", "reseed_every", "reseed_from", "reseed_candidates", "bank_share", "label_smoothing",
               "seed")
# keys that older checkpoints do not have
_RESUME_DEFAULTS = {"fgsm_random_start": False, "delta_pool": 1, "reseed_every": 0, "reseed_from": "bank",
                    "reseed_candidates": 7, "bank_share": 0.0, "label_smoothing": 0.0}


@dataclass
class TrainResult:
    model: torch.nn.Module
    delta: torch.Tensor | None          # (C,H,W) cpu for uat/lowcost, else None
    history: list[dict]
    seconds: float
    steps: int
    epochs_done: int
    passes: dict = field(default_factory=dict)   # {"forward", "backward"} of this process
    stopped_early: bool = False
    rank_spread: dict | None = None     # under torchrun: max |difference| across ranks of δ and weights


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _step_seed(seed: int, epoch: int, i: int, rank: int) -> int:
    """Seed of the random draws of step i of an epoch on a rank (a fixed mix, the same on every run)."""
    return (((seed * 1_000_003 + epoch) * 1_000_033 + i) * 1_009 + rank) % (2 ** 63)


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


class Trainer(Run):
    """Train ``model`` (a Normalized classifier) on ``train`` (an ImageData, or a FolderStream read from disk)
    with ``config``.

    History rows: ``step, epoch, lr, loss, acc`` (the training forward's loss and minibatch accuracy);
    for uat/lowcost also ``delta_norm`` (‖δ‖∞, 0-255 units), ``acc_before`` (minibatch accuracy with δ
    before the ascent step) and, every ``track_every`` steps, ``acc_after`` (with the updated δ). Both
    use the same weights, so their gap is the ascent step's effect alone: for uat the updated weights
    (``acc_before`` comes free from its ascent pass), for lowcost the step's starting weights (from its
    training forward; the probe runs before the weight update). The probe is one extra forward per
    tracked step, instrumentation, not counted in ``passes``.

    ``checkpoint_fn(trainer)`` is called on rank 0 after every epoch and when the run is stopped early,
    with finite weights and δ only (a diverged state is never handed out). ``resume_state`` is a dict
    from :meth:`state` (the weights are loaded by the caller).
    """

    def __init__(self, model, train, config: TrainConfig, device=None, resume_state: dict | None = None,
                 checkpoint_fn=None):
        super().__init__()
        self.cfg = config.validate()
        if len(train) == 0:
            raise UATError("the training set is empty")
        self.rank, self.world = _world()
        global_batch = self.cfg.batch_size * self.world
        if len(train) < global_batch:
            raise UATError(f"the training set ({len(train)} images) is smaller than one batch "
                           f"({self.cfg.batch_size}" + (f" × {self.world} processes" if self.world > 1 else "")
                           + "): lower --batch-size")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.data = train
        from .stream import is_stream
        self.streamed = is_stream(train)             # minibatches decoded from disk (_stream_batches)
        self.model = model.to(self.device)
        if self.cfg.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self.model                        # what the training forward calls (DDP under torchrun)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.eps = self.cfg.eps / 255.0
        self.steps_per_epoch = len(train) // global_batch              # full global batches only
        self.total = self.cfg.epochs * self.steps_per_epoch
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum,
                                   weight_decay=self.cfg.weight_decay, nesterov=self.cfg.momentum > 0)
        self.sched = self._scheduler()
        # (m,C,H,W): the pool of universal δs (m = 1: the paper's single δ); self.delta is the active member
        self.pool = torch.zeros((self.cfg.delta_pool, *train.shape), device=self.device)
        if self.cfg.delta_pool > 1:                   # members 1..m−1 start at random ±ε signs (seeded)
            g = torch.Generator().manual_seed(self.cfg.seed * 7_919 + 17)
            self.pool[1:] = (torch.randint(0, 2, self.pool[1:].shape, generator=g).float() * 2 - 1).to(
                self.device) * self.eps
        self.member = 0                               # the member a re-seed compares against
        self.pool_loss = torch.full((self.cfg.delta_pool,), float("nan"))   # last training loss per member
        self.reseeds = {"proposed": 0, "accepted": 0}
        self._bank = None
        self.delta = self.pool[0]                                           # (C,H,W) a view into the pool
        self.delta_opt = None
        if self.cfg.algorithm in UNIVERSAL and self.cfg.delta_rule == "adam":       # m = 1 (validated)
            self.delta = torch.zeros(train.shape, device=self.device, requires_grad=True)
            self.pool = self.delta.detach().unsqueeze(0)                    # the same storage
            self.delta_opt = torch.optim.Adam([self.delta], lr=self.cfg.delta_lr / 255.0, maximize=True)
        self.passes = {"forward": 0, "backward": 0}
        self.step_i, self.epoch_i, self.seconds = 0, 0, 0.0
        self.snapshots: list[tuple[int, torch.Tensor]] = []
        self.checkpoint_fn = checkpoint_fn
        self.rank_spread: dict | None = None
        if resume_state:
            self.load_state(resume_state)

    # ---- state for checkpoints / resume --------------------------------------------------------
    def _scheduler(self):
        T, c = self.total, self.cfg
        if c.schedule == "step":
            return torch.optim.lr_scheduler.MultiStepLR(self.opt, [int(0.5 * T), int(0.75 * T)], 0.1)
        if c.schedule == "onecycle" and T >= 2:
            # warm-up over 25% of the steps (at least 1.5 steps: torch's OneCycleLR divides by zero below)
            return torch.optim.lr_scheduler.OneCycleLR(self.opt, c.lr, total_steps=T, pct_start=max(0.25, 1.5 / T),
                                                       anneal_strategy="linear")
        if c.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T)
        return torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)

    def state(self) -> dict:
        """Everything but the weights that a resumed run needs (plain tensors and numbers)."""
        st = {"config": self.cfg.to_dict(), "optimizer": self.opt.state_dict(),
              "scheduler": self.sched.state_dict(), "delta": self.delta.detach().cpu().clone(),
              "pool": self.pool.detach().cpu().clone(), "pool_loss": self.pool_loss.clone(),
              "reseeds": dict(self.reseeds),
              "step": self.step_i, "epoch": self.epoch_i, "steps_per_epoch": self.steps_per_epoch,
              "world_size": self.world, "seconds": self.seconds, "passes": dict(self.passes),
              "history": list(self.history), "snapshots": [(s, d.clone()) for s, d in self.snapshots]}
        if self.delta_opt is not None:
            st["delta_optimizer"] = self.delta_opt.state_dict()
        return st

    def load_state(self, st: dict) -> None:
        """Continue from :meth:`state`; a state of another configuration is refused (one-line UATError)."""
        old = st.get("config", {})
        for k in RESUME_KEYS:
            was = old.get(k, _RESUME_DEFAULTS.get(k))
            if was != getattr(self.cfg, k):
                raise UATError(f"cannot resume: the checkpoint was trained with {k}={was!r}, "
                               f"not {getattr(self.cfg, k)!r}")
        spe = st.get("steps_per_epoch", self.steps_per_epoch)
        if spe != self.steps_per_epoch or st.get("world_size", self.world) != self.world:
            raise UATError(f"cannot resume: the checkpoint has {spe} steps per epoch on "
                           f"{st.get('world_size', 1)} process(es), this run {self.steps_per_epoch} on "
                           f"{self.world} (same --train-size, --batch-size and process count needed)")
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        with torch.no_grad():
            if "pool" in st:
                self.pool.copy_(st["pool"].to(self.device))
                self.pool_loss = st["pool_loss"].clone()
                self.reseeds = dict(st.get("reseeds", self.reseeds))
            else:
                self.pool[0].copy_(st["delta"].to(self.device))
        if self.delta_opt is not None and "delta_optimizer" in st:
            self.delta_opt.load_state_dict(st["delta_optimizer"])
        self.step_i = int(st["step"])
        self.epoch_i = self.step_i // self.steps_per_epoch
        self.seconds, self.passes = float(st["seconds"]), dict(st["passes"])
        self.history = list(st["history"])
        self.snapshots = [(int(s), d) for s, d in st.get("snapshots", [])]

    # ---- passes ------------------------------------------------------------------------------------
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

    @contextlib.contextmanager
    def _bn_stats_kept(self):
        """BatchNorm stays in training mode (batch statistics) but its running statistics do not move."""
        saved = [m.momentum for m in self._bns]
        for m in self._bns:
            m.momentum = 0.0                       # running = (1 − 0)·running + 0·batch
        try:
            yield
        finally:
            for m, mo in zip(self._bns, saved):
                m.momentum = mo

    def _input_grad(self, x, y, delta=None):
        """(∇ of the mean CE w.r.t. x (per-instance) or δ (universal), logits); weights frozen."""
        m = self.model
        for p in m.parameters():
            p.requires_grad_(False)
        try:
            with self._bn_stats_kept():
                if delta is None:
                    x = x.detach().requires_grad_(True)
                    logits = self._fwd(m, x)
                    g, = torch.autograd.grad(F.cross_entropy(logits, y), x)
                else:
                    d = delta.detach().requires_grad_(True)
                    logits = self._fwd(m, apply(x, d))
                    g, = torch.autograd.grad(F.cross_entropy(logits, y), d)
        finally:
            for p in m.parameters():
                p.requires_grad_(True)
        self.passes["backward"] += 1
        return g, logits.detach()

    @torch.no_grad()
    def _probe(self, x, y, delta) -> float:
        """Minibatch accuracy with ``delta`` (instrumentation: not counted as a pass, BN stats kept)."""
        with self._bn_stats_kept():
            return _acc(self.model(apply(x, delta)), y)

    def _ascend(self, g, target=None):
        """δ ← P(δ + update(g)); g = E∇δ ℓ, averaged across processes. ``target``: the pool (m,C,H,W) with
        g of the same shape (each member's rows: the gradient of its own images' share of the mean)."""
        if self.world > 1:
            dist.all_reduce(g)
            g /= self.world
        if not torch.isfinite(g).all():
            raise FloatingPointError("delta gradient")
        c = self.cfg
        with torch.no_grad():
            if target is not None:                     # the pool: m members, each on its images' gradient
                if c.delta_rule == "fgsm":
                    target.add_(g.sign(), alpha=self.eps)
                else:                                  # sgd: g·m is each member's mean over its own images
                    target.add_(g, alpha=c.delta_lr / 255.0 * c.delta_pool)
                target.clamp_(-self.eps, self.eps)
                return
            if c.delta_rule == "fgsm":
                self.delta.add_(g.sign(), alpha=self.eps)
            elif c.delta_rule == "sgd":
                self.delta.add_(g, alpha=c.delta_lr / 255.0)
            else:
                self.delta.grad = g
                self.delta_opt.step()
            self.delta.copy_(project(self.delta, self.eps, "linf"))

    # ---- the pool of universal perturbations ------------------------------------------------------
    def _assign(self, B: int) -> torch.Tensor:
        """(B,) the pool member each image of this step's minibatch carries: (b + step) mod m."""
        return (torch.arange(B, device=self.device) + self.step_i) % self.cfg.delta_pool

    def _weakest(self) -> int:
        """The member of lowest last training loss (never-used members first)."""
        if self.cfg.delta_pool == 1:
            return 0
        return int(torch.nan_to_num(self.pool_loss, nan=-math.inf).argmin())

    def _candidates(self, epoch: int, i: int) -> torch.Tensor:
        """(n,C,H,W) re-seed candidates at ±ε, the same on every rank (seeded by step, not rank)."""
        c = self.cfg
        g = torch.Generator().manual_seed(_step_seed(c.seed, epoch, i, 10_007))
        n, shape = c.reseed_candidates, tuple(self.pool.shape[1:])
        rand = (torch.randint(0, 2, (n, *shape), generator=g).float() * 2 - 1) * self.eps
        if c.reseed_from == "random":
            return rand
        bank = self._bank_tensor()
        idx = torch.randint(0, len(bank), (n,), generator=g)
        use_bank = torch.rand(n, generator=g) < 0.75                                  # 3 in 4 structured
        return torch.where(use_bank[:, None, None, None], bank[idx], rand)

    @torch.no_grad()
    def _reseed(self, x, y, epoch: int, i: int) -> None:
        """Score n candidates and the weakest member on one slice of the minibatch in one forward (no
        backward); that member becomes the candidate of highest mean CE when that beats it."""
        self.member = j = self._weakest()
        target = self.delta if self.cfg.delta_pool == 1 else self.pool[j]          # (C,H,W) a view
        cand = self._candidates(epoch, i).to(self.device)                           # (n,C,H,W)
        allp = torch.cat([target.detach()[None], cand])                             # (n+1,C,H,W)
        k = allp.shape[0]
        s = max(1, x.shape[0] // k)
        xs, ys = x[:s], y[:s]                                                        # (s,C,H,W), (s,)
        batch = apply(xs[None].expand(k, *xs.shape).reshape(k * s, *xs.shape[1:]),
                      allp[:, None].expand(k, s, *xs.shape[1:]).reshape(k * s, *xs.shape[1:]))
        with self._bn_stats_kept():
            logits = self._fwd(self.model, batch)                                   # (k·s, classes)
        loss = F.cross_entropy(logits, ys.repeat(k), reduction="none").view(k, s).mean(1)   # (k,)
        if self.world > 1:
            dist.all_reduce(loss)
        self.reseeds["proposed"] += 1
        best = int(loss[1:].argmax()) + 1
        if loss[best] > loss[0]:
            self.reseeds["accepted"] += 1
            target.copy_(allp[best])
            self.pool_loss[j] = float(loss[best]) / max(1, self.world)
            if self.delta_opt is not None:
                self.delta_opt.state.clear()               # a fresh start: Adam's moments begin again

    def _loss(self, logits, y):
        """The training loss of the weights: cross-entropy, with ``label_smoothing`` (Alg. 4's δ shares it)."""
        return F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)

    # ---- one step per algorithm ------------------------------------------------------------------
    def _step(self, x, y, gen: torch.Generator, track: bool) -> dict:
        """One minibatch: x (B,C,H,W) float in [0,1], y (B,). Returns the history row's metrics."""
        c, net = self.cfg, self.net
        rec = {}
        if c.algorithm in UNIVERSAL and (c.delta_pool > 1 or c.bank_share > 0):
            return self._pool_step(x, y, track, gen)
        if c.algorithm == "natural":
            logits = self._fwd(net, x)
            loss = self._loss(logits, y)
            self._weights_step(loss)
            self.opt.step()
        elif c.algorithm == "uat":                                        # Alg. 3
            d_old = self.delta.detach().clone()
            logits = self._fwd(net, apply(x, d_old))
            loss = self._loss(logits, y)
            self._weights_step(loss)
            self.opt.step()
            g, logits_new = self._input_grad(x, y, d_old)                   # with the updated weights
            self._ascend(g)
            rec["acc_before"] = _acc(logits_new, y)                         # θ_new, δ_old: free
        elif c.algorithm == "lowcost":                                    # Alg. 4
            d_old = self.delta.detach().clone().requires_grad_(True)
            logits = self._fwd(net, apply(x, d_old))
            loss = self._loss(logits, y)
            self._weights_step(loss)                                        # one backward: ∇θ and ∇δ
            self._ascend(d_old.grad)                                        # both updates use (θ_t, δ_t) ...
            rec["acc_before"] = _acc(logits.detach(), y)                    # θ_old, δ_old: free
            if track:
                rec["acc_after"] = self._probe(x, y, self.delta.detach())   # θ_old, δ_new
            self.opt.step()                                                 # ... so their order is free
        elif c.algorithm == "fgsm":
            if c.fgsm_random_start:                                         # Wong et al. 2020
                r = random_start(x.shape, self.eps, "linf", gen, x.device)
                g, _ = self._input_grad((x + r).clamp(0, 1), y)
                r = (r + 1.25 * self.eps * g.sign()).clamp(-self.eps, self.eps)
                xa = (x + r).clamp(0, 1)
            else:                                                           # plain FGSM (the paper's baseline)
                g, _ = self._input_grad(x, y)
                xa = (x + self.eps * g.sign()).clamp(0, 1)
            logits = self._fwd(net, xa)
            loss = self._loss(logits, y)
            self._weights_step(loss)
            self.opt.step()
        else:                                                             # pgd
            alpha = (c.pgd_step_size / 255.0) if c.pgd_step_size else 2.5 * self.eps / c.pgd_steps
            r = random_start(x.shape, self.eps, "linf", gen, x.device)
            for _ in range(c.pgd_steps):
                g, _ = self._input_grad((x + r).clamp(0, 1), y)
                r = (r + alpha * g.sign()).clamp(-self.eps, self.eps)
            logits = self._fwd(net, (x + r).clamp(0, 1))
            loss = self._loss(logits, y)
            self._weights_step(loss)
            self.opt.step()
        lv = loss.item()
        if not math.isfinite(lv):
            raise FloatingPointError("loss")
        rec["loss"] = lv
        rec["acc"] = _acc(logits.detach(), y)
        if c.algorithm in UNIVERSAL:
            if track and c.algorithm == "uat":
                rec["acc_after"] = self._probe(x, y, self.delta.detach())   # θ_new, δ_new
            rec["delta_norm"] = norm_of(self.delta.detach()) * 255.0
            self.pool_loss[0] = lv
        return rec

    def _bank_patterns(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n,C,H,W) patterns drawn from the structured bank at ±ε (the step's generator: resumable)."""
        bank = self._bank_tensor()
        return bank[torch.randint(0, len(bank), (n,), generator=gen)].to(self.device)

    def _bank_tensor(self) -> torch.Tensor:
        """(M,C,H,W) the structured bank at ±ε (no random draws), built once on first use."""
        if self._bank is None:
            from .attacks.bank import pattern_bank
            self._bank = pattern_bank(tuple(self.pool.shape[1:]), self.eps, random=0).patterns
        return self._bank

    def _pool_step(self, x, y, track: bool, gen: torch.Generator) -> dict:
        """Alg. 3 / Alg. 4 with a pool of m δs (image b carries member (b + t) mod m) and, with a bank
        share, the first ⌊f·B⌋ images (the batch is in random order) carrying fixed bank patterns instead.
        The same passes as the plain algorithm."""
        c, net = self.cfg, self.net
        B = x.shape[0]
        nb = min(B - 1, int(c.bank_share * B))                                   # images with bank patterns
        fixed = self._bank_patterns(nb, gen) if nb else None                     # (nb,C,H,W)
        a = self._assign(B - nb)                                                 # (B−nb,) pool members

        def perturb(P):                                                          # (B,C,H,W) one δ per image
            return P[a] if fixed is None else torch.cat([fixed, P[a]])
        rec = {}
        if c.algorithm == "uat":                                                 # Alg. 3
            P = self.pool.detach().clone()                                       # (m,C,H,W)
            logits = self._fwd(net, apply(x, perturb(P)))
            loss = self._loss(logits, y)
            self._weights_step(loss)
            self.opt.step()
            m = self.model                                                       # ∇ of every member at once
            for p in m.parameters():
                p.requires_grad_(False)
            try:
                with self._bn_stats_kept():
                    Pg = P.requires_grad_(True)
                    logits_new = self._fwd(m, apply(x, perturb(Pg)))
                    g, = torch.autograd.grad(F.cross_entropy(logits_new, y), Pg)
            finally:
                for p in m.parameters():
                    p.requires_grad_(True)
            self.passes["backward"] += 1
            self._ascend(g, self.pool)
            rec["acc_before"] = _acc(logits_new.detach(), y)
            if track:
                rec["acc_after"] = self._probe(x, y, perturb(self.pool.detach()))
        else:                                                                    # Alg. 4: one backward
            P = self.pool.detach().clone().requires_grad_(True)
            logits = self._fwd(net, apply(x, perturb(P)))
            loss = self._loss(logits, y)
            self._weights_step(loss)
            self._ascend(P.grad, self.pool)
            rec["acc_before"] = _acc(logits.detach(), y)
            if track:
                rec["acc_after"] = self._probe(x, y, perturb(self.pool.detach()))
            self.opt.step()
        lv = loss.item()
        if not math.isfinite(lv):
            raise FloatingPointError("loss")
        with torch.no_grad():                                                    # each member's loss (free)
            per = F.cross_entropy(logits.detach(), y, reduction="none")[nb:]      # the pool's images
            tot = torch.zeros(c.delta_pool, device=per.device).index_add_(0, a, per)
            cnt = torch.zeros(c.delta_pool, device=per.device).index_add_(0, a, torch.ones_like(per))
            used = cnt > 0
            self.pool_loss[used.cpu()] = (tot[used] / cnt[used]).cpu()
        rec.update(loss=lv, acc=_acc(logits.detach(), y), delta_norm=norm_of(self.pool.detach()) * 255.0)
        return rec

    # ---- the loop ----------------------------------------------------------------------------------
    def _order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the whole training set (the same on every rank)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        return torch.randperm(len(self.data), generator=g)

    def _batch(self, order, epoch: int, i: int):
        """This rank's block of global batch i: (x (B,C,H,W) float in [0,1], y (B,), step generator)."""
        B = self.cfg.batch_size
        start = i * B * self.world + self.rank * B
        idx = order[start:start + B]
        gen = torch.Generator().manual_seed(_step_seed(self.cfg.seed, epoch, i, self.rank))
        x = self.data.images[idx].to(self.device, non_blocking=True).float().div_(255)
        y = self.data.labels[idx].to(self.device, non_blocking=True)
        if self.cfg.augment:
            x = crop_flip(x, 4, self.cfg.flip, gen)
        if self.cfg.channels_last and self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y, gen

    def _stream_batches(self, order, epoch: int, first: int):
        """Steps ``first`` … of an epoch over a stream: this rank's block of each global batch (the blocks
        ``_batch`` takes), decoded by the stream's workers; yields what ``_batch`` returns."""
        B, c = self.cfg.batch_size, self.cfg
        keys = []
        for i in range(first, self.steps_per_epoch):
            start = i * B * self.world + self.rank * B
            idx = order[start:start + B].tolist()
            # augmentation: image j's own draws (seed, epoch, j), whatever worker decodes it
            keys.append([(j, _step_seed(c.seed, epoch, j, 30_011), c.flip) for j in idx] if c.augment else idx)
        feed = self.data.iterate(keys, pin=self.device.type == "cuda")
        try:
            for i, (x, y) in zip(range(first, self.steps_per_epoch), feed):
                if not len(y):
                    raise UATError(f"none of the {len(keys[i - first])} images of training step {self.step_i + 1} "
                                   f"could be decoded (see the warnings): is {self.data.root} damaged?")
                gen = torch.Generator().manual_seed(_step_seed(c.seed, epoch, i, self.rank))
                x = x.to(self.device, non_blocking=True).float().div_(255)          # (b,C,H,W)
                y = y.to(self.device, non_blocking=True)
                if c.channels_last and self.device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, y, gen
        finally:
            feed.close()                          # stops the decoding processes (a stop mid-epoch)

    def _agree_to_stop(self) -> bool:
        """Under torchrun every rank stops at the same step once any of them was asked to."""
        if self.world > 1:
            flag = torch.tensor([1.0 if self._stop else 0.0],
                                device=self.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self._stop = bool(flag.item())
        return self._stop

    def _finite_state(self) -> bool:
        return bool(torch.isfinite(self.pool).all()) and all(bool(torch.isfinite(p).all())
                                                              for p in self.model.parameters())

    def _save(self) -> None:
        """Rank 0 writes the checkpoint; under torchrun every rank learns whether that worked and all stop
        with rank 0's one-line message if it did not (no rank is left waiting in a collective)."""
        err = None
        if self.checkpoint_fn is not None and self.rank == 0:
            if not self._finite_state():
                err = (f"training diverged (the weights became NaN or Inf) by step {self.step_i}: "
                       "lower --lr; the last good checkpoint is kept")
            else:
                try:
                    self.checkpoint_fn(self)
                except OSError as e:
                    err = f"could not write the checkpoint ({e.strerror or e}): training stopped"
        if self.world > 1:
            box = [err]
            dist.broadcast_object_list(box, src=0)
            err = box[0]
        if err:
            raise UATError(err)

    def _agree_on_failure(self, failed: str | None) -> None:
        """Under torchrun, a divergence on any rank stops every rank at the same step with the same line."""
        if self.world > 1:
            flag = torch.tensor([float(self.rank + 1) if failed else 0.0],
                                device=self.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0:
                raise UATError(f"training diverged (the loss or δ became NaN or Inf) on process "
                               f"{int(flag.item()) - 1} at step {self.step_i + 1}: lower --lr; the last good "
                               "checkpoint is kept")
        elif failed:
            raise UATError(failed)

    def _rank_spread(self) -> dict:
        """Max |difference| across ranks of δ and of the weights (0 when DDP keeps them in sync)."""
        out = {}
        for name, t in (("delta", self.pool.detach().flatten()),
                        ("weights", torch.cat([p.detach().flatten() for p in self.model.parameters()]))):
            if dist.get_backend() != "nccl":
                t = t.cpu()
            hi, lo = t.clone(), t.clone()
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            out[name] = float((hi - lo).max())
        return out

    def _steps(self):
        c = self.cfg
        self.model.train()
        spe = self.steps_per_epoch
        start_epoch, skip = divmod(self.step_i, spe)
        for epoch in range(start_epoch, c.epochs):
            t0 = time.perf_counter()               # self.seconds counts only time spent in here, not paused
            order = self._order(epoch)
            first = skip if epoch == start_epoch else 0
            feed = self._stream_batches(order, epoch, first) if self.streamed else None
            for i in range(first, spe):
                x, y, gen = next(feed) if feed is not None else self._batch(order, epoch, i)
                track = c.algorithm in UNIVERSAL and c.track_every > 0 and (self.step_i + 1) % c.track_every == 0
                failed = None
                try:
                    if c.algorithm in UNIVERSAL and c.reseed_every and (self.step_i + 1) % c.reseed_every == 0:
                        self._reseed(x, y, epoch, i)
                    rec = self._step(x, y, gen, track)
                except FloatingPointError as e:
                    failed = (f"training diverged (the {e} became NaN or Inf) at step {self.step_i + 1}: "
                              "lower --lr; the last good checkpoint is kept")
                self._agree_on_failure(failed)
                self.sched.step()
                self.step_i += 1
                rec.update(step=self.step_i, epoch=epoch, lr=self.opt.param_groups[0]["lr"])
                self.history.append(rec)
                snap = None
                if c.algorithm in UNIVERSAL and c.snapshot_every and self.step_i % c.snapshot_every == 0:
                    snap = self.delta.detach().cpu().clone()
                    self.snapshots.append((self.step_i, snap))
                self.seconds += time.perf_counter() - t0
                yield Event("step", self.step_i, self.total, epoch, rec, snap)
                t0 = time.perf_counter()
                if self._agree_to_stop():
                    break
            if feed is not None:
                feed.close()
            self.seconds += time.perf_counter() - t0
            self.epoch_i = self.step_i // spe
            if self.epoch_i > epoch:                  # the epoch is complete
                self._save()
                yield Event("epoch", self.step_i, self.total, epoch, {"loss": self.history[-1]["loss"],
                                                                      "seconds": self.seconds})
            if self.stopping:
                break
        if self.step_i % spe:
            self._save()                          # stopped mid-epoch: resumable from this very step
        if self.world > 1:
            self.rank_spread = self._rank_spread()
        self.model.eval()
        delta = None
        if c.algorithm in UNIVERSAL:               # the member of highest last training loss (m = 1: δ)
            j = 0 if torch.isnan(self.pool_loss).all() else int(torch.nan_to_num(self.pool_loss, nan=-1.0).argmax())
            delta = self.pool[j].detach().cpu().clone()
        self.result = TrainResult(self.model, delta, self.history, self.seconds, self.step_i, self.epoch_i,
                                  dict(self.passes), self.step_i < self.total, self.rank_spread)
        yield Event("done", self.step_i, self.total, self.epoch_i, {}, delta, self.result)


def default_config_for(dataset: str, arch: str, **overrides) -> TrainConfig:
    """Sensible defaults per dataset: digits trains without augmentation and with a smaller lr."""
    kw = {}
    if dataset == "digits":
        kw.update(lr=0.05, flip=False, augment=False, batch_size=64)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kw)

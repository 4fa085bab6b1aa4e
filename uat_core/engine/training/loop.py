"""The training loop: natural, universal adversarial training (Alg. 3 and 4) and per-instance FGSM/PGD baselines.

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

The code: ``config.py`` (TrainConfig), ``adversary.py`` (the pool of δs, its update rule and re-seeding),
``steps.py`` (one step function per algorithm), ``loop.py`` (this loop: passes, checkpoints, resume, torchrun).

The :class:`Trainer` is a :class:`~uat_core.engine.events.Run`: iterate it for events, ``stop()`` it, or
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
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from ..augment import crop_flip
from ..batches import block
from ..constraints import Ball, apply
from ..errors import UATError
from ..events import Event, Run
from ..stream import is_stream
from .adversary import Adversary, step_seed
from .config import RESUME_DEFAULTS, RESUME_KEYS, UNIVERSAL, TrainConfig, TrainResult
from .steps import STEPS, accuracy


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
        self.streamed = is_stream(train)             # minibatches decoded from disk (_stream_batches)
        self.model = model.to(self.device)
        if self.cfg.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self.model                        # what the training forward calls (DDP under torchrun)
        if self.world > 1:
            self.net = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.steps_per_epoch = len(train) // global_batch              # full global batches only
        self.total = self.cfg.epochs * self.steps_per_epoch
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, momentum=self.cfg.momentum,
                                   weight_decay=self.cfg.weight_decay, nesterov=self.cfg.momentum > 0)
        self.sched = self._scheduler()
        # the pool of universal δs (m = 1: the paper's single δ), its update rule and re-seeding (uat / lowcost)
        self.adversary = Adversary(self.cfg, tuple(train.shape), self.device)
        self.pool = self.adversary.pool                                     # (m,C,H,W)
        self.delta = self.adversary.delta                                   # (C,H,W) a view: member 0
        self.pgd_ball = Ball(self.cfg.eps)                                  # per-instance fgsm / pgd: ℓ∞
        self._step_fn = STEPS[self.cfg.algorithm]
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
              "pool": self.pool.detach().cpu().clone(), "pool_loss": self.adversary.loss.clone(),
              "reseeds": dict(self.adversary.reseeds),
              "step": self.step_i, "epoch": self.epoch_i, "steps_per_epoch": self.steps_per_epoch,
              "world_size": self.world, "seconds": self.seconds, "passes": dict(self.passes),
              "history": list(self.history), "snapshots": [(s, d.clone()) for s, d in self.snapshots]}
        if self.adversary.update.opt is not None:
            st["delta_optimizer"] = self.adversary.update.opt.state_dict()
        return st

    def load_state(self, st: dict) -> None:
        """Continue from :meth:`state`; a state of another configuration is refused (one-line UATError)."""
        old = st.get("config", {})
        for k in RESUME_KEYS:
            was = old.get(k, RESUME_DEFAULTS.get(k))
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
                self.adversary.loss = st["pool_loss"].clone()
                self.adversary.reseeds = dict(st.get("reseeds", self.adversary.reseeds))
            else:
                self.pool[0].copy_(st["delta"].to(self.device))
        opt = self.adversary.update.opt
        if opt is not None and "delta_optimizer" in st:
            sd = st["delta_optimizer"]
            for s in sd["state"].values():            # a checkpoint whose ADAM state was of δ (C,H,W), not (1,C,H,W)
                for k in ("exp_avg", "exp_avg_sq"):
                    if k in s and s[k].shape != self.pool.shape:
                        s[k] = s[k].reshape(self.pool.shape)
            opt.load_state_dict(sd)
        self.step_i = int(st["step"])
        self.epoch_i = self.step_i // self.steps_per_epoch
        self.seconds, self.passes = float(st["seconds"]), dict(st["passes"])
        self.history = list(st["history"])
        self.snapshots = [(int(s), d) for s, d in st.get("snapshots", [])]

    # ---- passes (the steps of steps.py call these) ------------------------------------------------
    def fwd(self, net, x):
        """A forward pass of ``net`` (the model, or DDP under torchrun), counted; bfloat16 autocast with amp."""
        self.passes["forward"] += 1
        if self.cfg.amp and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return net(x).float()
        return net(x)

    def loss(self, logits, y):
        """The training loss of the weights: cross-entropy, with ``label_smoothing`` (Alg. 4's δ shares it)."""
        return F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)

    def backward(self, loss):
        """The weights' backward pass, counted (the gradients of the step before are cleared first)."""
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

    @contextlib.contextmanager
    def _input_only(self):
        """Weights frozen and BatchNorm statistics kept: a pass that needs only an input gradient."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            with self._bn_stats_kept():
                yield
        finally:
            for p in self.model.parameters():
                p.requires_grad_(True)
        self.passes["backward"] += 1

    def input_grad(self, xa, y):
        """∇ of the mean CE w.r.t. the input images xa (per-instance attacks), weights frozen."""
        with self._input_only():
            xa = xa.detach().requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(self.fwd(self.model, xa), y), xa)
        return g

    def delta_grad(self, build, wrt, y):
        """(∇ of the mean CE w.r.t. ``wrt``, the logits): ``build()`` makes the perturbed batch from ``wrt`` (the
        pool of universal δs); weights frozen."""
        with self._input_only():
            logits = self.fwd(self.model, build())
            g, = torch.autograd.grad(F.cross_entropy(logits, y), wrt)
        return g, logits.detach()

    @torch.no_grad()
    def probe(self, x, y, delta) -> float:
        """Minibatch accuracy with ``delta`` (instrumentation: not counted as a pass, BN stats kept)."""
        with self._bn_stats_kept():
            return accuracy(self.model(apply(x, delta)), y)

    # ---- the pool of universal perturbations (adversary.py) ----------------------------------------
    def _candidates(self, epoch: int, i: int) -> torch.Tensor:
        return self.adversary.candidates(epoch, i)

    @torch.no_grad()
    def _reseed(self, x, y, epoch: int, i: int) -> None:
        def score(batch):
            with self._bn_stats_kept():
                return self.fwd(self.model, batch)
        self.adversary.reseed(score, x, y, epoch, i, self.world)

    def _step(self, x, y, gen: torch.Generator, track: bool) -> dict:
        """One minibatch of the configured algorithm (steps.py): x (B,C,H,W) float in [0,1], y (B,)."""
        return self._step_fn(self, x, y, gen, track)

    # ---- the loop ----------------------------------------------------------------------------------
    def _order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the whole training set (the same on every rank)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        return torch.randperm(len(self.data), generator=g)

    def _batch(self, order, epoch: int, i: int):
        """This rank's block of global batch i: (x (B,C,H,W) float in [0,1], y (B,), step generator)."""
        idx = block(order, i, self.cfg.batch_size, self.world, self.rank)
        gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, epoch, i, self.rank))
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
        c = self.cfg
        keys = []
        for i in range(first, self.steps_per_epoch):
            idx = block(order, i, c.batch_size, self.world, self.rank).tolist()
            # augmentation: image j's own draws (seed, epoch, j), whatever worker decodes it
            keys.append([(j, step_seed(c.seed, epoch, j, 30_011), c.flip) for j in idx] if c.augment else idx)
        feed = self.data.iterate(keys, pin=self.device.type == "cuda")
        try:
            for i, (x, y) in zip(range(first, self.steps_per_epoch), feed):
                if not len(y):
                    raise UATError(f"none of the {len(keys[i - first])} images of training step {self.step_i + 1} "
                                   f"could be decoded (see the warnings): is {self.data.root} damaged?")
                gen = torch.Generator().manual_seed(step_seed(c.seed, epoch, i, self.rank))
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
        # the universal δ of the run: the member of highest last training loss (m = 1: δ)
        delta = self.adversary.strongest() if c.algorithm in UNIVERSAL else None
        self.result = TrainResult(self.model, delta, self.history, self.seconds, self.step_i, self.epoch_i,
                                  dict(self.passes), self.step_i < self.total, self.rank_spread)
        yield Event("done", self.step_i, self.total, self.epoch_i, {}, delta, self.result)

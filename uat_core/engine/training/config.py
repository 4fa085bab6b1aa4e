"""The configuration of a training run (:class:`TrainConfig`, every field with its unit), the keys a resumed run
must share, and what a run returns (:class:`TrainResult`)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..constraints import check_norm
from ..errors import UATError

ALGORITHMS = ("natural", "uat", "lowcost", "fgsm", "pgd")
DELTA_RULES = ("fgsm", "sgd", "adam")
SCHEDULES = ("step", "onecycle", "cosine", "constant")
UNIVERSAL = ("uat", "lowcost")      # the algorithms that carry a universal δ
RESEED_FROM = ("bank", "random")
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
    norm: str = "linf"             # linf | l2: the ball of the universal δ (per-instance fgsm/pgd: linf only)
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
        check_norm(self.norm)
        if self.norm != "linf" and self.algorithm not in UNIVERSAL:
            raise UATError(f"--norm {self.norm} applies to the universal δ of uat and lowcost; "
                           f"{self.algorithm} trains against per-instance ℓ∞ perturbations")
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
               "norm", "seed")
# keys that older checkpoints do not have
RESUME_DEFAULTS = {"fgsm_random_start": False, "delta_pool": 1, "reseed_every": 0, "reseed_from": "bank",
                    "reseed_candidates": 7, "bank_share": 0.0, "label_smoothing": 0.0, "norm": "linf"}


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

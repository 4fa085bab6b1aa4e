"""Alg. 1: universal perturbations by iterated DeepFool ("iDeepFool"),
Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, "Universal adversarial perturbations", CVPR 2017,
https://arxiv.org/abs/1610.08401 — the baseline of Shafahi et al. (2020).

    v ← 0
    repeat (at most ``max_passes`` times) until fooling ratio on X ≥ ``xi``:
        for each image x_i not fooled by v:           # f(x_i + v) = f(x_i)
            Δv_i ← DeepFool(x_i + v)                   # smallest step that flips x_i + v
            v ← P_ε(v + Δv_i)                          # project onto the ε-ball

Batched: the images of a minibatch that v does not fool yet get their DeepFool steps from one batched
call (computed at the same v), then are folded into v one after another, each followed by the projection.

Norm: ℓ∞ or ℓ2; ε in 0-255 units. Example::

    run = IDeepFool(model, x, y, IDFConfig(eps=8, max_passes=5))
    result = run.run(progress=True)          # result.delta: (C,H,W)
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from ..batches import shuffled_blocks
from ..constraints import apply, check_norm, norm_of, project
from ..errors import UATError
from ..events import Event, Run, check_finite
from ..models import frozen
from .deepfool import deepfool_frozen
from .universal import AttackResult, attack_set


@dataclass
class IDFConfig:
    eps: float = 8.0            # 0-255 units
    norm: str = "linf"
    xi: float = 0.8             # stop once the fooling ratio on the attack set reaches ξ
    max_passes: int = 10        # cap on passes over the attack set
    batch_size: int = 128
    candidates: int = 10        # classes DeepFool considers
    max_iter: int = 10          # DeepFool iterations per image
    overshoot: float = 0.02
    seed: int = 0
    snapshot_every: int = 1
    batched: bool | None = None  # class gradients from one vectorised backward (True), a loop (False); None: on CUDA

    def validate(self) -> "IDFConfig":
        if not (0 < self.eps <= 255):
            raise UATError(f"eps must be in (0, 255] (0-255 pixel units), got {self.eps}")
        check_norm(self.norm)
        if not (0 < self.xi <= 1):
            raise UATError(f"xi (target fooling ratio) must be in (0, 1], got {self.xi}")
        if self.max_passes < 1 or self.batch_size < 1 or self.max_iter < 1 or self.candidates < 2:
            raise UATError("passes, batch size, DeepFool iterations must be ≥ 1 and candidates ≥ 2")
        return self


class IDeepFool(Run):
    """Alg. 1 as a stream of events (one "step" per minibatch)."""

    def __init__(self, model, images, labels, config: IDFConfig | None = None, device=None):
        super().__init__()
        self.cfg = (config or IDFConfig()).validate()
        self.model = model
        self.device, self.x, self.y = attack_set(model, images, labels, device)
        self.eps = self.cfg.eps / 255.0
        self.delta = torch.zeros(self.x.shape[1:], device=self.device)
        self.steps_per_epoch = math.ceil(len(self.x) / self.cfg.batch_size)
        self.total = self.cfg.max_passes * self.steps_per_epoch
        self.snapshots: list[tuple[int, torch.Tensor]] = []
        self.backwards = 0

    def _clean_pred(self, model):
        with torch.inference_mode():
            return torch.cat([model(self.x[i:i + 500]).argmax(1) for i in range(0, len(self.x), 500)])

    def fooling_ratio(self, model, clean_pred) -> float:
        with torch.inference_mode():
            pred = torch.cat([model(apply(self.x[i:i + 500], self.delta)).argmax(1)
                              for i in range(0, len(self.x), 500)])
        return (pred != clean_pred).float().mean().item()

    def _steps(self):
        cfg, t0 = self.cfg, time.perf_counter()
        gen = torch.Generator().manual_seed(cfg.seed)
        step, epoch = 0, 0
        v = self.delta.clone()
        with frozen(self.model) as model:
            clean = self._clean_pred(model)
            for epoch in range(cfg.max_passes):
                for idx in shuffled_blocks(len(self.x), cfg.batch_size, gen, self.steps_per_epoch, device=self.device):
                    x = self.x[idx]
                    with torch.no_grad():
                        logits = model(apply(x, v))                           # (B,K)
                    check_finite(logits, "the model's output (a broken checkpoint?)")
                    pred = logits.argmax(1)
                    todo = (pred == clean[idx]).nonzero().squeeze(1)          # not fooled yet
                    moved = 0
                    if todo.numel():
                        r, _, nb = deepfool_frozen(model, apply(x[todo], v), cfg.norm, cfg.candidates,
                                             cfg.max_iter, cfg.overshoot, cfg.batched)
                        self.backwards += nb
                        check_finite(r, "a DeepFool step")
                        for ri in r:                                           # v ← P(v + Δv_i)
                            v = project(v + ri, self.eps, cfg.norm)
                        moved = int(todo.numel())
                    self.delta = v
                    step += 1
                    fooled_batch = 1.0 - todo.numel() / len(idx)
                    rec = {"step": step, "epoch": epoch, "acc": (pred == self.y[idx]).float().mean().item(),
                           "fooled": fooled_batch, "updated": moved, "norm": norm_of(v, cfg.norm) * 255.0}
                    self.history.append(rec)
                    snap = None
                    if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                        snap = v.cpu().clone()
                        self.snapshots.append((step, snap))
                    yield Event("step", step, self.total, epoch, rec, snap)
                    if self.stopping:
                        break
                if self.stopping:
                    break
                fr = self.fooling_ratio(model, clean)
                self.history[-1]["pass_fooling_ratio"] = fr
                yield Event("epoch", step, self.total, epoch, {"fooling_ratio": fr})
                if fr >= cfg.xi:
                    break
        final = v.cpu().clone()
        if not self.snapshots or self.snapshots[-1][0] != step:
            self.snapshots.append((step, final))
        self.result = AttackResult(final, self.history, self.snapshots, time.perf_counter() - t0, step,
                                   self.stopping, {**asdict(cfg), "method": "idf", "passes": epoch + 1,
                                                   "backwards": self.backwards})
        yield Event("done", step, self.total, epoch, {}, final, self.result)


def ideepfool(model, images, labels, config: IDFConfig | None = None, progress=False, callback=None, **kw):
    return IDeepFool(model, images, labels, config, **kw).run(callback, progress, "iDeepFool")

"""The strong universal attack: a structured multi-start search around Alg. 2.

Alg. 2 started at δ = 0 (the paper's attack, ``universal.py``) climbs the nearest hill of a very
non-concave objective, and on CIFAR-10 ResNets that hill is low: fixed stripes or checkerboards at ±ε
(``bank.py``; no optimisation at all) fool more images. This attack therefore

1. **screens** the bank of structured patterns and ``restarts`` random starts on a probe batch drawn from
   the attack set (never the test set): every candidate on ``probe`` images, then the best
   ``4·top_k`` of them again on ``4·probe`` images (all batched, a few hundred forward passes in all);
2. **refines** Alg. 2 from the best ``top_k`` starts and from δ = 0 (``init`` chooses which), each with its
   own seed and a step size that decays within the start (cosine, from ``tau0`` = ε/4 by default);
3. keeps going only from the **leaders** (successive halving): after each round every surviving δ is
   scored on the whole attack set and the better half continues, until one start has had ``epochs``
   epochs of Alg. 2;
4. returns, of the refined δs *and the best fixed pattern*, the one that leaves the fewest attack images
   correct (``select="acc"``, the default: the figure every report prints; the objective breaks ties) or
   the one of highest objective (``select="loss"``), with the start it came from, the leaderboard and
   the best fixed pattern (the baseline every result should show beside it). So the attack is never
   weaker on its own images than the baseline it is compared with.

With ``epochs`` = E, ``top_k`` = 4 and 3 halving rounds the refinement costs about 2·E epochs and the
screen and the scoring of the leaders about 0.5·E, so the whole attack stays within 3× plain Alg. 2 with the same epochs
(``bench/bench_strong.py`` measures it).

Norm: ℓ∞ or ℓ2 (bank patterns are scaled onto the sphere). Objective: the clipped cross-entropy of
eq. 3 (or the targeted one). Arguments are :class:`StrongConfig`'s fields.

Example::

    run = StrongUniversalAttack(model, x_train, y_train, StrongConfig(eps=8, epochs=10))
    result = run.run(progress=True)          # or: for event in run: ... (kinds "screen", "round", "step", "done")
    result.delta, result.config["start"]      # (C,H,W) and e.g. "anti p=4 φ=1 c=---"
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from ..constraints import check_norm, random_start
from ..errors import UATError
from ..events import Event, Run
from ..models import frozen
from .bank import pattern_bank, score_bank, screen
from .universal import OPTIMIZERS, AttackConfig, AttackResult, UniversalAttack, attack_set

INITS = ("bank", "random", "zero")       # where the starts come from (several may be combined)
SELECT = ("acc", "loss")


@dataclass
class StrongConfig:
    eps: float = 8.0              # 0-255 units
    beta: float = 9.0             # clip of the per-image CE (eq. 3)
    norm: str = "linf"
    optimizer: str = "pgd"        # the update rule of every refinement (Alg. 2's)
    epochs: int = 10              # Alg. 2 epochs the winning start gets in all
    batch_size: int = 128
    tau0: float | None = None     # first step size in 0-255 units (default ε/4 for pgd/adam), cosine-decayed
    init: tuple[str, ...] = ("bank", "random", "zero")   # start pools: the bank, random draws, δ = 0
    restarts: int = 16            # random starts screened (half random-sign, half uniform)
    top_k: int = 4                # screened starts that are refined (plus δ = 0 when "zero" is in init)
    rounds: int = 3               # successive-halving rounds before the winner's last stretch
    probe: int = 32               # probe images of the first screen (the second uses 4·probe)
    target: int | None = None
    seed: int = 0
    snapshot_every: int = 10
    select: str = "acc"           # the final δ: fewest attack images correct (acc) or highest objective (loss)

    def validate(self) -> "StrongConfig":
        AttackConfig(eps=self.eps, beta=self.beta, optimizer=self.optimizer, norm=self.norm, epochs=self.epochs,
                     batch_size=self.batch_size, step_size=self.tau0, target=self.target,
                     snapshot_every=self.snapshot_every).validate()
        check_norm(self.norm)
        if isinstance(self.init, str):
            self.init = tuple(s.strip() for s in self.init.split(",") if s.strip())
        bad = [s for s in self.init if s not in INITS]
        if bad or not self.init:
            raise UATError(f"unknown --init '{','.join(bad) or '(empty)'}': choose one or more of {', '.join(INITS)}")
        for name, v, lo, hi in (("restarts", self.restarts, 0, 10_000), ("top-k", self.top_k, 1, 256),
                                ("rounds", self.rounds, 0, 10), ("probe", self.probe, 1, 100_000)):
            if not isinstance(v, int) or not (lo <= v <= hi):
                raise UATError(f"--{name} must be an integer in [{lo}, {hi}], got {v}")
        if self.select not in SELECT:
            raise UATError(f"unknown selection '{self.select}': choose {' or '.join(SELECT)}")
        if "random" in self.init and self.restarts < 1:
            raise UATError("--restarts must be at least 1 when --init includes random (or drop 'random')")
        if self.init == ("zero",) and self.top_k > 1:
            self.top_k = 1                    # only one start exists: plain Alg. 2 with the cosine schedule
        return self

    @property
    def tau(self) -> float | None:
        """The first step size in 0-255 units; None for sgd and msgd (AttackConfig's default step then)."""
        if self.tau0 is not None:
            return self.tau0
        return self.eps / 4 if self.optimizer in ("pgd", "adam") else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["init"] = list(self.init)
        return d


def halving_plan(epochs: int, n_starts: int, rounds: int) -> list[tuple[int, int]]:
    """(starts in the round, epochs each) per round of successive halving; the last entry is the winner's
    last stretch.

    E = 10, 5 starts: (5, 1), (3, 2), (2, 2), (1, 5): 20 epochs in all, the winner's adding up to E."""
    E, n = epochs, n_starts
    rounds = min(rounds, max(0, math.ceil(math.log2(n)))) if n > 1 else 0
    per = max(1, E // (rounds + 2)) if rounds else 0
    plan, used = [], 0
    for r in range(rounds):
        ep = max(1, per // 2) if r == 0 else per          # the first round only sorts out the hopeless
        if used + ep >= E:
            break
        plan.append((n, ep))
        used += ep
        n = max(1, math.ceil(n / 2))
    plan.append((1, E - used))
    return plan


@dataclass
class Start:
    name: str                         # "zero", "rand± #3", "anti p=4 φ=1 c=---", ...
    delta: torch.Tensor               # (C,H,W) starting point
    probe_loss: float = float("nan")
    probe_acc: float = float("nan")
    run: UniversalAttack | None = None
    loss: float = float("nan")        # objective on the whole attack set after its last round
    acc: float = float("nan")
    epochs: float = 0.0
    out_round: int | None = None      # the round after which it was dropped (None: still in)
    history: list = field(default_factory=list)


class StrongUniversalAttack(Run):
    """The multi-start universal attack as a stream of events; see the module docstring."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 config: StrongConfig | None = None, device=None):
        super().__init__()
        self.cfg = (config or StrongConfig()).validate()
        self.model = model
        self.device, self.x, self.y = attack_set(model, images, labels, device)
        self.eps = self.cfg.eps / 255.0
        self.delta = torch.zeros(self.x.shape[1:], device=self.device)
        self.steps_per_epoch = math.ceil(len(self.x) / self.cfg.batch_size)
        self.plan = self._plan()
        self.total = sum(n * e for n, e in self.plan) * self.steps_per_epoch
        self.starts: list[Start] = []
        self.best_fixed: Start | None = None
        self.current: str = ""

    # ---- planning ----------------------------------------------------------------------------
    def n_starts(self) -> int:
        return self.cfg.top_k + ("zero" in self.cfg.init and self.cfg.init != ("zero",))

    def _plan(self) -> list[tuple[int, int]]:
        return halving_plan(self.cfg.epochs, self.n_starts(), self.cfg.rounds)

    # ---- pieces --------------------------------------------------------------------------------
    def _objective(self, model, delta: torch.Tensor) -> tuple[float, float]:
        """(objective, accuracy) of δ on the whole attack set (the objective is shown positive untargeted)."""
        sc = score_bank(model, delta[None], self.x, self.y, self.cfg.beta, self.cfg.target, chunk=256,
                        device=self.device)
        lo = float(sc.loss[0])
        return (abs(lo) if self.cfg.target is None else lo), float(sc.acc[0])

    def _candidates(self) -> list[Start]:
        cfg, shape = self.cfg, tuple(self.x.shape[1:])
        out = []
        if "bank" in cfg.init:
            bank = pattern_bank(shape, self.eps, cfg.norm, random=0)
            out += [Start(n, p) for n, p in zip(bank.names, bank.patterns)]
        if "random" in cfg.init:
            g = torch.Generator().manual_seed(cfg.seed + 7919)
            for r in range(cfg.restarts):
                if r % 2 == 0 and cfg.norm == "linf":
                    d = torch.randint(0, 2, shape, generator=g).float().mul_(2).sub_(1).mul_(self.eps)
                    out.append(Start(f"random sign #{r // 2}", d))
                else:
                    out.append(Start(f"random uniform #{r // 2}", random_start(shape, self.eps, cfg.norm, g)))
        return out

    def _screen(self, cands: list[Start]) -> list[Start]:
        """The best 4·top_k candidates by their objective on probe images of the attack set (bank.screen)."""
        cfg = self.cfg
        idx, sc = screen(self.model, torch.stack([c.delta for c in cands]), self.x, self.y, cfg.probe,
                         4 * max(cfg.top_k, 1), cfg.beta, cfg.target, cfg.seed, self.device)
        out = [cands[int(i)] for i in idx]
        for c, lo, ac in zip(out, sc.loss.tolist(), sc.acc.tolist()):
            c.probe_loss, c.probe_acc = (abs(lo) if cfg.target is None else lo), ac
        return out

    def _new_run(self, st: Start, i: int) -> UniversalAttack:
        cfg = self.cfg
        acfg = AttackConfig(eps=cfg.eps, beta=cfg.beta, optimizer=cfg.optimizer, norm=cfg.norm, step_size=cfg.tau,
                            schedule="cosine", epochs=cfg.epochs, batch_size=cfg.batch_size, target=cfg.target,
                            seed=cfg.seed + 1000 * i, snapshot_every=cfg.snapshot_every)
        return UniversalAttack(self.model, self.x, self.y, acfg, device=self.device, delta_init=st.delta)

    def leaderboard(self) -> list[dict]:
        """One row per refined start, best first (still in, then by loss): name, probe and attack-set figures."""
        def f(v):
            return None if v != v else v                      # NaN (not measured) -> None, for JSON
        rows = [{"start": s.name, "probe_loss": f(s.probe_loss), "probe_acc": f(s.probe_acc), "loss": f(s.loss),
                 "acc": f(s.acc), "epochs": s.epochs, "dropped_after_round": s.out_round} for s in self.starts]
        return sorted(rows, key=lambda r: 1e9 if r["loss"] is None else -r["loss"])

    # ---- the loop -----------------------------------------------------------------------------
    def _steps(self):
        cfg, t0 = self.cfg, time.perf_counter()
        step = 0
        with frozen(self.model) as model:
            cands = self._candidates()
            screened = self._screen(cands) if cands else []
            # the baseline: of the best screened bank patterns, the one that leaves the fewest attack images
            fixed = [c for c in screened if not c.name.startswith("random")][:2]
            if fixed:
                sc = score_bank(model, torch.stack([c.delta for c in fixed]), self.x, self.y, cfg.beta, cfg.target,
                                chunk=256, device=self.device)
                for c, lo, ac in zip(fixed, sc.loss.tolist(), sc.acc.tolist()):
                    c.loss, c.acc = (abs(lo) if cfg.target is None else lo), ac
            best = min(fixed, key=lambda c: c.acc) if fixed else None
            # its own record: the same start may also be refined below, which must not overwrite these figures
            self.best_fixed = None if best is None else Start(best.name, best.delta.clone(), best.probe_loss,
                                                              best.probe_acc, loss=best.loss, acc=best.acc)
            starts = screened[:cfg.top_k] if cfg.init != ("zero",) else []
            if "zero" in cfg.init:
                starts.append(Start("zero", torch.zeros(self.x.shape[1:])))
            self.starts = starts
            yield Event("screen", 0, self.total, 0,
                        {"candidates": len(cands), "leaderboard": [
                            {"start": c.name, "probe_loss": c.probe_loss, "probe_acc": c.probe_acc}
                            for c in screened[:2 * max(cfg.top_k, 1)]],
                         "best_fixed": None if self.best_fixed is None else self.best_fixed.name})
            for i, st in enumerate(starts):
                st.run = self._new_run(st, i)
            alive = list(starts)
            for r, (n, ep) in enumerate(self.plan):
                alive = alive[:n]
                for st in alive:
                    self.current = st.name
                    for ev in st.run.advance(ep * self.steps_per_epoch):
                        if ev.kind != "step":
                            continue
                        step += 1
                        rec = {**ev.metrics, "step": step, "start_step": ev.step, "start": st.name, "round": r}
                        self.history.append(rec)
                        yield Event("step", step, self.total, ev.epoch, rec, ev.delta)
                        if self.stopping:
                            break
                    st.epochs += ep
                    st.loss, st.acc = self._objective(model, st.run.delta)
                    if self.stopping:
                        break
                if self.stopping:
                    break
                alive.sort(key=lambda s: -s.loss)
                keep = self.plan[r + 1][0] if r + 1 < len(self.plan) else 1
                for s in alive[keep:]:
                    s.out_round = r
                self.delta = alive[0].run.delta
                yield Event("round", step, self.total, r, {"round": r, "leaderboard": self.leaderboard()})
            refined = [s for s in starts if s.run is not None and s.loss == s.loss]
            winner = None
            if refined and cfg.select == "loss":
                winner = max(refined, key=lambda s: s.loss)
            elif refined:                      # fewest correct; the fixed pattern competes too
                pool = refined + ([self.best_fixed] if self.best_fixed is not None else [])
                winner = min(pool, key=lambda s: (s.acc, -s.loss))
            for s in starts:                   # close the paused refinements while the weights are still frozen
                if s.run is not None and s.run._gen is not None:
                    s.run._gen.close()
        if winner is None:                 # stopped before anything was refined: the best screened start
            best = screened[0] if screened else Start("zero", torch.zeros(self.x.shape[1:]))
            final, wname, snaps, whist = best.delta.cpu().clone(), best.name, [], []
        elif winner.run is None:           # the best fixed pattern beat every refinement on the attack set
            final, wname, snaps, whist = winner.delta.cpu().clone(), f"fixed {winner.name}", [], []
        else:
            final, wname = winner.run.delta.cpu().clone(), winner.name
            snaps, whist = list(winner.run.snapshots), winner.run.history
        if not snaps or not torch.equal(snaps[-1][1], final):
            snaps.append((len(whist), final))
        self.delta = final
        conf = {**cfg.to_dict(), "attack": "strong", "start": wname, "plan": self.plan,
                "leaderboard": self.leaderboard(), "candidates": len(cands),
                "best_fixed": None if self.best_fixed is None else
                {"name": self.best_fixed.name, "loss": self.best_fixed.loss, "acc": self.best_fixed.acc},
                "winner_history": whist}
        self.result = AttackResult(final, self.history, snaps, time.perf_counter() - t0, step, self.stopping, conf,
                                   None if self.best_fixed is None else self.best_fixed.delta.cpu().clone())
        yield Event("done", step, self.total, cfg.epochs - 1, {"start": wname}, final, self.result)


def strong_attack(model, images, labels, config: StrongConfig | None = None, **kw) -> AttackResult:
    """Run the strong universal attack to the end (see :class:`StrongUniversalAttack`)."""
    progress = kw.pop("progress", False)
    callback = kw.pop("callback", None)
    return StrongUniversalAttack(model, images, labels, config, **kw).run(callback, progress, "strong attack")


__all__ = ["StrongConfig", "StrongUniversalAttack", "strong_attack", "halving_plan", "INITS", "OPTIMIZERS"]

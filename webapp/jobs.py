"""Long experiments as jobs that advance in small time slices (no Streamlit in here).

A :class:`Job` wraps a generator that yields after every engine step (one minibatch of an attack or of
training), so a UI can call ``job.pump(0.4)`` to move it forward for about 0.4 s, draw ``job.state``,
and come back later; ``job.stop()`` ends it after the current step; ``job.finish()`` runs it to the end
(tests, the precompute script). The generator's return value becomes ``job.result``.

Timing is honest: ``compute_seconds`` counts only the time spent inside engine steps, never the time
the page spends drawing between slices.

Generators (each takes the job first and returns a plain result dict of floats, lists and tensors):
    attack_job    Alg. 2, the strong attack or iDeepFool on one model, then test
                  accuracy beside the best fixed pattern                         (attack lab)
    bank_job      test accuracy under every fixed pattern of the bank            (starting points)
    sweep_job     repeated attacks over a swept setting: β or the attack-set size (Figs. 5 and 6)
    race_job      SGD, MSGD, ADAM and PGD advanced in turn on the same data       (Figs. 2-3)
    idf_job       iDeepFool then Alg. 2 on the same images                         (Table 2)
    uat_job       train natural / uat / lowcost, then attack each                  (Alg. 3/4, Table 1)
    transfer_job  accuracy of every model under every δ                           (transfer matrix)
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Generator

import torch

from uat_core.data import ImageData
from uat_core.errors import UATError
from uat_core.evaluation import evaluate, predict
from uat_core.pipeline import make_attack, make_trainer
from uat_core.training import default_config_for, resolve_variant

Gen = Generator[None, None, Any]


class Job:
    """One experiment in progress; see the module docstring."""

    def __init__(self, name: str, gen_fn: Callable[..., Gen], *args, on_done: Callable[["Job"], None] | None = None,
                 **kwargs):
        self.name = name
        self.state: dict[str, Any] = {"phase": "starting", "progress": 0.0}
        self.stopping = False
        self.done = False
        self.result: Any = None
        self.error: str | None = None
        self.current = None                  # the engine Run being advanced, if any
        self.compute_seconds = 0.0           # time spent inside engine steps
        self.started = time.time()
        self.on_done = on_done
        self.scheduler = None                # a webapp.scheduler.Scheduler: wait for a slot before advancing
        self.queued = False                  # waiting for a slot right now
        self.started_computing = False
        self._gen = gen_fn(self, *args, **kwargs)
        self._lock = threading.Lock()

    def pump(self, budget: float = 0.4) -> int:
        """Advance for about ``budget`` seconds (at least one step); returns the number of steps taken.

        Safe to call from several threads (Streamlit may start a new script run while a fragment run is
        still busy): a caller that finds the job already being advanced returns 0 at once.
        """
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            return self._pump(budget)
        finally:
            self._lock.release()

    def _pump(self, budget: float) -> int:
        if self.scheduler is not None and not self.done:
            if self.stopping and not self.started_computing:       # stopped while waiting: nothing to show
                self.scheduler.release(self)
                self.done, self.queued, self.current = True, False, None
                self.state["phase"] = "stopped before it started"
                return 0
            if not self.scheduler.admit(self):
                self.queued = True
                pos, wait = self.scheduler.position(self), self.scheduler.estimated_wait(self)
                self.state.update(queue_position=pos, queue_wait=wait,
                                  phase=f"waiting for a free slot: number {pos} in the queue, about {wait:.0f} s")
                return 0
            if self.queued:
                self.queued = False
                self.state.pop("queue_position", None)
                self.state["phase"] = "starting"
        self.started_computing = True
        t0, n = time.perf_counter(), 0
        while not self.done:
            try:
                next(self._gen)
            except StopIteration as stop:
                self._finish(stop.value)
            except UATError as e:
                self.error = str(e)
                self._finish(None)
            except Exception as e:               # a bug: keep the job from looping on it, then re-raise
                self.error = f"{type(e).__name__}: {e}"
                self._finish(None)
                raise
            n += 1
            if time.perf_counter() - t0 >= budget:
                break
        return n

    def finish(self) -> Any:
        """Run to the end; returns the result (None after an error)."""
        self.pump(math.inf)
        return self.result

    def stop(self) -> None:
        """End after the current step; the partial result is still evaluated and returned."""
        self.stopping = True
        if self.current is not None:
            self.current.stop()

    @property
    def progress(self) -> float:
        return float(self.state.get("progress", 0.0))

    def _finish(self, result) -> None:
        if self.scheduler is not None:
            self.scheduler.release(self)
        self.done, self.result, self.current = True, result, None
        self.state["progress"] = 1.0
        self.state["phase"] = "stopped" if self.stopping else ("failed" if self.error else "done")
        if self.on_done is not None and self.error is None:
            self.on_done(self)


def drive(job: Job, run, on_step: Callable[[Any], None] | None = None) -> Gen:
    """Advance an engine Run one event per yield, timing its steps; returns (result, compute seconds)."""
    job.current = run
    if job.stopping:
        run.stop()
    it, secs = iter(run), 0.0
    while True:
        t0 = time.perf_counter()
        try:
            ev = next(it)
        except StopIteration:
            break
        dt = time.perf_counter() - t0
        secs += dt
        job.compute_seconds += dt
        if on_step is not None:
            on_step(ev)
        yield
        if ev.kind == "done":
            break
    job.current = None
    return run.result, secs


def _timed(job: Job, fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    job.compute_seconds += time.perf_counter() - t0
    return out


def top1_under(model, test: ImageData, delta: torch.Tensor | None, device=None) -> float:
    """Top-1 accuracy of ``model`` on ``test`` with δ added (one batched pass)."""
    top, _ = predict(model, test.images, delta, device=device, topk=1)
    return (top[:, 0] == test.labels).float().mean().item()


# ---- attack lab -------------------------------------------------------------------------------------

def attack_job(job: Job, model, attack_set: ImageData, test: ImageData, cfg: dict, method: str = "alg2",
               device=None) -> Gen:
    """One attack (cfg: AttackConfig, StrongConfig or IDFConfig fields), then clean/perturbed metrics on
    ``test``, with the best fixed bank pattern (chosen on the attack set) beside it."""
    from uat_core.attacks.bank import baseline_of
    run = make_attack(model, attack_set, method, device, **cfg)
    job.state.update(phase="screening the pattern bank" if method == "strong" else "attacking",
                     history=run.history, delta=run.delta, total=run.total, step=0, leaderboard=[], current=None)

    def on_step(ev):
        if ev.kind in ("screen", "round"):
            job.state["leaderboard"] = ev.metrics["leaderboard"]
        if method == "strong" and ev.kind == "step":
            job.state.update(current=run.current,
                             phase=f"refining start '{run.current}' (round {ev.metrics['round'] + 1})")
        job.state.update(delta=run.delta, step=ev.step, progress=0.95 * ev.step / max(1, run.total))

    res, secs = yield from drive(job, run, on_step)
    job.state["phase"] = f"evaluating on {len(test)} test images"
    yield
    m = _timed(job, evaluate, model, test.images, test.labels, res.delta, test.num_classes, device=device,
               target=cfg.get("target"))
    if res.best_fixed is None:
        job.state["phase"] = "screening the pattern bank (the baseline)"
        yield
    fixed_name, fixed = _timed(job, baseline_of, res, model, attack_set.float_images(), attack_set.labels,
                               cfg["eps"] / 255.0, cfg.get("norm", "linf"), cfg.get("beta", 9.0), cfg.get("target"),
                               cfg.get("seed", 0), device)
    fixed_top1 = _timed(job, top1_under, model, test, fixed, device)
    config = {k: v for k, v in res.config.items() if k != "winner_history"}
    return {"metrics": m, "delta": res.delta, "history": list(res.config.get("winner_history", res.history)),
            "snapshots": list(res.snapshots), "seconds": secs, "steps": res.steps, "stopped": res.stopped_early,
            "config": config, "attack": method, "fixed": {"name": fixed_name, "perturbed_top1": fixed_top1},
            "preview": preview(model, test, res.delta, device=device)}


def preview_indices(test: ImageData, n: int = 16) -> list[int]:
    """``n`` test images taken round-robin over the classes (the first of each class, then the second, …),
    so the picture grid shows every class even when the test images are stored class by class."""
    per_class = [(test.labels == c).nonzero().flatten().tolist() for c in range(test.num_classes)]
    out: list[int] = []
    for rank in range(max((len(p) for p in per_class), default=0)):
        for p in per_class:
            if rank < len(p) and len(out) < n:
                out.append(p[rank])
    return out


def preview(model, test: ImageData, delta: torch.Tensor, n: int = 16, device=None) -> dict:
    """Predictions (label, confidence) on ``n`` test images, clean and with δ: the picture grid."""
    idx = preview_indices(test, n)
    imgs = test.images[idx]                                                  # (n,C,H,W) uint8
    clean, cconf = predict(model, imgs, None, device=device, topk=1)
    pert, pconf = predict(model, imgs, delta, device=device, topk=1)
    return {"n": len(idx), "idx": idx, "clean_pred": clean[:, 0].tolist(), "clean_conf": cconf.tolist(),
            "pert_pred": pert[:, 0].tolist(), "pert_conf": pconf.tolist()}


# ---- sweeps (β, attack-set size) -------------------------------------------------------------------

def sweep_job(job: Job, model, train: ImageData, test: ImageData, points: list[dict], device=None) -> Gen:
    """Attacks at each point (dict with ``x``, ``repeat``, ``size`` and AttackConfig fields ``cfg``).

    Points are run in order; every finished one appends a row ``{x, repeat, size, steps,
    perturbed_top1, seconds}`` to ``job.state["rows"]`` (and to the result) as it arrives.
    """
    rows: list[dict] = []
    job.state.update(rows=rows, phase="sweeping", clean_top1=None)
    clean = _timed(job, top1_under, model, test, None, device)
    job.state["clean_top1"] = clean
    for i, p in enumerate(points):
        if job.stopping:
            break
        job.state["phase"] = p.get("label", f"point {i + 1} of {len(points)}")
        run = make_attack(model, train.subset(p["size"], seed=p["repeat"]), "alg2", device,
                          **{**p["cfg"], "snapshot_every": 0})
        job.state["history"] = run.history

        def on_step(ev, i=i, total=run.total):
            job.state["progress"] = (i + ev.step / max(1, total)) / len(points)

        res, secs = yield from drive(job, run, on_step)
        if res.stopped_early:
            break
        acc = _timed(job, top1_under, model, test, res.delta, device)
        rows.append({"x": p["x"], "repeat": p["repeat"], "size": min(p["size"], len(train)), "steps": res.steps,
                     "perturbed_top1": acc, "seconds": secs})
        yield
    return {"rows": rows, "clean_top1": clean, "complete": len(rows) == len(points)}


def beta_points(s: dict) -> list[dict]:
    """The β sweep (Fig. 5) as sweep points: every β for repeat 0 first, then the next repeat."""
    pts = []
    for r in range(s["repeats"]):
        for b in s["betas"]:
            pts.append({"x": b, "repeat": r, "size": s["attack_size"],
                        "label": f"β = {'∞' if math.isinf(b) else f'{b:g}'}, attack subset {r + 1} of {s['repeats']}",
                        "cfg": {"eps": s["eps"], "beta": b, "optimizer": s.get("optimizer", "pgd"),
                                "epochs": s["epochs"], "seed": r}})
    return pts


def size_points(s: dict, n_train: int, batch_size: int = 128) -> list[dict]:
    """The data-size sweep (Fig. 6): the same number of steps for every size, so only the data changes."""
    pts = []
    for r in range(s["repeats"]):
        for n in s["sizes"]:
            n_eff = min(n, n_train)
            per_epoch = math.ceil(n_eff / batch_size)
            epochs = max(1, round(s["steps"] / per_epoch))
            pts.append({"x": n_eff, "repeat": r, "size": n_eff,
                        "label": f"{n_eff} images, attack subset {r + 1} of {s['repeats']}",
                        "cfg": {"eps": s["eps"], "beta": 9.0, "optimizer": "pgd", "epochs": epochs, "seed": r,
                                "batch_size": batch_size}})
    return pts


# ---- optimizer race ---------------------------------------------------------------------------------

def race_job(job: Job, model, attack_set: ImageData, test: ImageData, s: dict, device=None,
             optimizers=("sgd", "msgd", "adam", "pgd")) -> Gen:
    """Every optimizer on the same images, one step each in turn, so the curves grow side by side."""
    runs = {o: make_attack(model, attack_set, "alg2", device, eps=s["eps"], beta=s["beta"], optimizer=o,
                           epochs=s["epochs"], seed=s["seed"], snapshot_every=0) for o in optimizers}
    its = {o: iter(r) for o, r in runs.items()}
    secs = {o: 0.0 for o in optimizers}
    job.state.update(phase="racing", histories={o: r.history for o, r in runs.items()},
                     deltas={o: r.delta for o, r in runs.items()})
    active = list(optimizers)
    total = sum(r.total for r in runs.values())
    while active:
        for o in list(active):
            run = runs[o]
            job.current = run
            if job.stopping:
                run.stop()
            t0 = time.perf_counter()
            ev = next(its[o])
            dt = time.perf_counter() - t0
            secs[o] += dt
            job.compute_seconds += dt
            job.state["deltas"][o] = run.delta
            if ev.kind == "done":
                active.remove(o)
            job.state["progress"] = 0.9 * sum(len(r.history) for r in runs.values()) / total
            yield
    job.current = None
    out = {}
    for o in optimizers:
        job.state["phase"] = f"evaluating {o.upper()}'s δ on {len(test)} test images"
        yield
        res = runs[o].result
        out[o] = {"history": list(res.history), "delta": res.delta, "seconds": secs[o], "steps": res.steps,
                  "perturbed_top1": _timed(job, top1_under, model, test, res.delta, device)}
    return {"runs": out, "clean_top1": _timed(job, top1_under, model, test, None, device)}


# ---- iDeepFool vs Alg. 2 ------------------------------------------------------------------------------

def idf_job(job: Job, model, attack_set: ImageData, test: ImageData, s: dict, device=None) -> Gen:
    """Table 2: iDeepFool (Alg. 1) and then Alg. 2 on the same model and images; time and accuracy."""
    out: dict[str, dict] = {}
    job.state.update(seconds={}, histories={}, phase="iDeepFool")
    plan = [("idf", {"eps": s["eps"], "max_passes": s["idf_passes"], "xi": 1.0, "batch_size": s["idf_batch"]}),
            ("alg2", {"eps": s["eps"], "epochs": s["alg2_epochs"], "beta": 9.0, "optimizer": "pgd",
                      "snapshot_every": 0})]
    for i, (method, cfg) in enumerate(plan):
        if job.stopping:
            break
        job.state["phase"] = "iDeepFool (Alg. 1)" if method == "idf" else "Alg. 2 (sign gradient, β = 9)"
        run = make_attack(model, attack_set, method, device, **cfg)
        job.state["histories"][method] = run.history
        job.state["seconds"][method] = 0.0
        t_start = job.compute_seconds

        def on_step(ev, i=i, run=run, t_start=t_start, method=method):
            job.state["progress"] = 0.5 * i + 0.45 * ev.step / max(1, run.total)
            job.state["seconds"][method] = job.compute_seconds - t_start
            job.state["delta"] = run.delta

        res, secs = yield from drive(job, run, on_step)
        job.state["seconds"][method] = secs
        job.state["phase"] = f"evaluating on {len(test)} test images"
        yield
        m = _timed(job, evaluate, model, test.images, test.labels, res.delta, test.num_classes, device=device)
        out[method] = {"seconds": secs, "steps": res.steps, "delta": res.delta, "history": list(res.history),
                       "perturbed_top1": m["perturbed_top1"], "clean_top1": m["clean_top1"],
                       "fooling_ratio": m["fooling_ratio"], "stopped": res.stopped_early,
                       "backwards": getattr(run, "backwards", res.steps)}
    return out


# ---- universal adversarial training -----------------------------------------------------------------------

def uat_job(job: Job, arch: str, train: ImageData, test: ImageData, s: dict, device=None) -> Gen:
    """Train each algorithm in ``s["algorithms"]``, then attack each trained model from scratch (the strong
    attack, β = 9) and measure clean and robust test accuracy, with the best fixed pattern beside it."""
    algos = list(s["algorithms"])
    data = train.subset(s["train_size"], seed=s["seed"])
    hist: dict[str, list] = {}
    models, train_deltas, train_secs, passes = {}, {}, {}, {}
    job.state.update(histories=hist, train_deltas=train_deltas, phase="training", rows=[])
    n_units = 2 * len(algos)
    for i, algo in enumerate(algos):
        if job.stopping:
            break
        base, extra = resolve_variant(algo)          # "uat_pool": Alg. 3 with a pool of δs
        rule = s["delta_rule"] if not (extra.get("delta_pool", 1) > 1 and s["delta_rule"] == "adam") else "fgsm"
        cfg = default_config_for(train.name, arch, algorithm=base, epochs=s["epochs"], eps=s["eps"],
                                 delta_rule=rule, seed=s["seed"], snapshot_every=5, track_every=5, **extra)
        trainer = make_trainer(arch, data, cfg, device)
        hist[algo] = trainer.history
        job.state["phase"] = f"training {algo} ({i + 1} of {len(algos)})"
        job.state["training"] = algo

        def on_step(ev, i=i, trainer=trainer, algo=algo, base=base):
            job.state["progress"] = (i + ev.step / max(1, trainer.total)) / n_units
            if base in ("uat", "lowcost"):
                train_deltas[algo] = trainer.pool[0].detach()

        res, secs = yield from drive(job, trainer, on_step)
        models[algo] = res.model.eval()
        train_secs[algo], passes[algo] = secs, dict(res.passes)
        if res.delta is not None:
            train_deltas[algo] = res.delta
        if res.stopped_early:
            break
    rows, attack_deltas = [], {}
    job.state["attack_deltas"] = attack_deltas
    for j, algo in enumerate(models):
        if job.stopping:
            break
        job.state["phase"] = f"attacking the {algo} model from scratch (the strong attack)"
        run = make_attack(models[algo], train.subset(s["attack_size"], seed=s["seed"]), "strong", device,
                          eps=s["eps"], beta=9.0, epochs=s["attack_epochs"], seed=s["seed"], snapshot_every=0)

        def on_step(ev, j=j, run=run):
            job.state["progress"] = (len(algos) + j + ev.step / max(1, run.total)) / n_units

        res, _ = yield from drive(job, run, on_step)
        if res.stopped_early:
            break
        m = _timed(job, evaluate, models[algo], test.images, test.labels, res.delta, test.num_classes,
                   device=device)
        attack_deltas[algo] = res.delta
        fixed_top1 = _timed(job, top1_under, models[algo], test, res.best_fixed, device)
        rows.append({"name": algo, "algorithm": algo, "clean_top1": m["clean_top1"],
                     "robust_top1": m["perturbed_top1"], "fixed_top1": fixed_top1, "train_seconds": train_secs[algo],
                     "forward": passes[algo]["forward"], "backward": passes[algo]["backward"]})
        job.state["rows"] = rows
        yield
    return {"histories": {a: list(h) for a, h in hist.items()}, "rows": rows, "attack_deltas": attack_deltas,
            "train_deltas": {a: d.detach().cpu().clone() for a, d in train_deltas.items()}, "models": models,
            "source": "live"}


# ---- transfer -----------------------------------------------------------------------------------------

def transfer_job(job: Job, models: dict, deltas: dict, test: ImageData, device=None) -> Gen:
    """Accuracy of every model (columns) under every δ (rows), one cell per step, plus clean accuracy."""
    src, dst = list(deltas), list(models)
    matrix = [[None] * len(dst) for _ in src]
    job.state.update(matrix=matrix, sources=src, targets=dst, phase="evaluating")
    clean = {}
    cells = len(src) * len(dst) + len(dst)
    done = 0
    for d in dst:
        clean[d] = _timed(job, top1_under, models[d], test, None, device)
        done += 1
        job.state["progress"] = done / cells
        yield
    for i, s in enumerate(src):
        for j, d in enumerate(dst):
            if job.stopping:
                return {"matrix": matrix, "sources": src, "targets": dst, "clean": clean, "complete": False}
            matrix[i][j] = _timed(job, top1_under, models[d], test, deltas[s], device)
            done += 1
            job.state["progress"] = done / cells
            job.state["phase"] = f"δ of {s} on {d}"
            yield
    return {"matrix": matrix, "sources": src, "targets": dst, "clean": clean, "complete": True}


# ---- the pattern bank ("Why starting points matter") ---------------------------------------------------

def bank_job(job: Job, model, test: ImageData, s: dict, device=None) -> Gen:
    """Test accuracy under every fixed pattern of the bank at ε (a block of patterns per step), then the
    patterns sorted from strongest to weakest."""
    from uat_core.attacks.bank import pattern_bank, score_bank
    bank = pattern_bank(test.shape, s["eps"] / 255.0, random=s.get("random", 4), seed=s.get("seed", 0))
    clean = _timed(job, top1_under, model, test, None, device)
    accs: list[float] = []
    job.state.update(phase="scoring the bank", clean=clean, names=bank.names, accs=accs)
    block = max(1, 2048 // max(1, len(test)))
    for i in range(0, len(bank), block):
        if job.stopping:
            break
        sc = _timed(job, score_bank, model, bank.patterns[i:i + block], test.images, test.labels, s["beta"],
                    chunk=256, device=device)
        accs.extend(sc.acc.tolist())
        job.state.update(progress=len(accs) / len(bank), phase=f"scored {len(accs)} of {len(bank)} patterns")
        yield
    order = sorted(range(len(accs)), key=lambda k: accs[k])
    return {"names": [bank.names[k] for k in order], "accs": [accs[k] for k in order], "clean": clean,
            "patterns": bank.patterns[order].clone(), "complete": len(accs) == len(bank), "n": len(test)}


# ---- one entry point per page (the app and the precompute script build their jobs here) -------------------

def lab_config(s: dict, n_images: int, batch_size: int = 128) -> dict:
    """AttackConfig (or, with s["strong"], StrongConfig) fields of the attack lab's settings, with about
    30 δ snapshots for the scrubber."""
    total = s["epochs"] * math.ceil(min(s["attack_size"], n_images) / batch_size)
    cfg = {"eps": s["eps"], "beta": s["beta"], "optimizer": s["optimizer"], "epochs": s["epochs"], "norm": s["norm"],
           "target": s["target"], "seed": s["seed"], "batch_size": batch_size, "snapshot_every": max(1, total // 30)}
    if s.get("strong"):
        return {**cfg, "tau0": s["step_size"]}
    return {**cfg, "step_size": s["step_size"]}


def page_job(page: str, s: dict, train: ImageData, test: ImageData, model=None, device=None, arch: str = "",
             models: dict | None = None, deltas: dict | None = None, on_done=None) -> Job:
    """The job that computes ``page``'s result for settings ``s``."""
    if page == "lab":
        return Job(page, attack_job, model, train.subset(s["attack_size"], seed=s["seed"]), test,
                   lab_config(s, len(train)), "strong" if s.get("strong") else "alg2", device, on_done=on_done)
    if page == "beta":
        return Job(page, sweep_job, model, train, test, beta_points(s), device, on_done=on_done)
    if page == "size":
        return Job(page, sweep_job, model, train, test, size_points(s, len(train)), device, on_done=on_done)
    if page == "race":
        return Job(page, race_job, model, train.subset(s["attack_size"], seed=s["seed"]), test, s, device,
                   on_done=on_done)
    if page == "idf":
        return Job(page, idf_job, model, train.subset(s["attack_size"], seed=0), test, s, device, on_done=on_done)
    if page == "uat":
        return Job(page, uat_job, arch, train, test, s, device, on_done=on_done)
    if page == "transfer":
        return Job(page, transfer_job, models, deltas, test, device, on_done=on_done)
    if page == "bank":
        return Job(page, bank_job, model, test, s, device, on_done=on_done)
    raise KeyError(page)

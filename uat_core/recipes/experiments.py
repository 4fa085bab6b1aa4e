"""The paper's experiments, once: generators that the app's pages, the notebooks, the precompute script
and the tests all drive.

Each experiment is a generator function ``fn(p, ...)``: ``p`` is a :class:`Progress` (its ``state`` dict is
what a live view draws: phase, progress, histories, δ, rows so far; ``p.stop()`` asks the experiment to end
after its current engine step and still return the partial result). The generator yields after every engine
step (one minibatch of an attack or of training) and returns a plain result dict of floats, lists and
tensors. Two ways to drive one:

    result = experiments.run(experiments.sweep, model, train, test, experiments.beta_points(s))   # to the end
    result = experiments.run(experiments.attack, model, attack_set, test, cfg, callback=draw)       # draw(p) per step

and the app wraps the same generator in a time-sliced :class:`webapp.jobs.Job` (which *is* a Progress).
``compute_seconds`` counts only time spent inside engine steps, never the time a UI spends drawing.

    attack            Alg. 2, the strong attack or iDeepFool on one model, then test accuracy beside the
                      best fixed pattern                                           (attack lab, CLI figures)
    bank              test accuracy under every fixed pattern of the bank          (starting points)
    sweep             repeated attacks over a swept setting: β or the attack-set size (Figs. 5 and 6),
                      points from :func:`beta_points` / :func:`size_points`
    race              SGD, MSGD, ADAM and PGD advanced in turn on the same data     (Figs. 2-3)
    idf_and_alg2      iDeepFool then Alg. 2 on the same images                      (Table 2)
    train_and_attack  train natural / uat / lowcost / …, then attack each           (Alg. 3/4, Table 1)
    transfer          accuracy of every model under every δ                        (transfer matrix)

The older one-call helpers (:func:`attack_and_eval`, :func:`beta_sweep`, :func:`datasize_sweep`,
:func:`idf_vs_alg2`, :func:`transfer_matrix`) drive these same generators.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from typing import Any, Callable, Generator, Iterator

import torch

from . import protocol
from ..engine import export
from ..engine.attacks.bank import bank_pattern, baseline_of, pattern_bank, score_bank
from ..engine.data import ImageData
from ..engine.evaluation import evaluate, predict
from ..engine.events import Run
from .pipeline import make_attack, make_trainer
from .profiles import ALGORITHMS, train_config

Experiment = Generator[None, None, Any]


class Progress:
    """The live side of one experiment: what it is doing (``state``), whether it should stop, its compute time."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {"phase": "starting", "progress": 0.0}
        self.stopping = False
        self.current: Run | None = None      # the engine Run being advanced, if any
        self.compute_seconds = 0.0           # time spent inside engine steps

    def stop(self) -> None:
        """End after the current step; the partial result is still evaluated and returned."""
        self.stopping = True
        if self.current is not None:
            self.current.stop()

    @property
    def progress(self) -> float:
        return float(self.state.get("progress", 0.0))


def run(fn: Callable[..., Experiment], *args, callback: Callable[[Progress], None] | None = None, **kw) -> Any:
    """Drive experiment ``fn(p, *args, **kw)`` to its end and return its result; ``callback(p)`` after every
    step (a notebook's live plot). Ctrl-C stops it after the current step and still returns the partial result."""
    p = Progress()
    gen = fn(p, *args, **kw)

    def on_interrupt(signum, frame):          # first Ctrl-C (a notebook's interrupt): stop after this step
        if p.stopping:
            raise KeyboardInterrupt           # the second one aborts
        p.stop()

    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, on_interrupt) if main else None
    try:
        while True:
            try:
                next(gen)
            except StopIteration as done:
                return done.value
            if callback is not None:
                callback(p)
    finally:
        if main:
            signal.signal(signal.SIGINT, old)


def drive(p: Progress, run, on_step: Callable[[Any], None] | None = None) -> Experiment:
    """Advance an engine Run one event per yield, timing its steps; returns (result, compute seconds)."""
    p.current = run
    if p.stopping:
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
        p.compute_seconds += dt
        if on_step is not None:
            on_step(ev)
        yield
        if ev.kind == "done":
            break
    p.current = None
    return run.result, secs


def timed(p: Progress, fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    p.compute_seconds += time.perf_counter() - t0
    return out


def top1_under(model, test: ImageData, delta: torch.Tensor | None, device=None) -> float:
    """Top-1 accuracy of ``model`` on ``test`` with δ added (one batched pass)."""
    top, _ = predict(model, test.images, delta, device=device, topk=1)
    return (top[:, 0] == test.labels).float().mean().item()


# ---- attack lab -------------------------------------------------------------------------------------

def attack(p: Progress, model, attack_set: ImageData, test: ImageData, cfg: dict, method: str = "alg2",
           device=None) -> Experiment:
    """One attack (cfg: AttackConfig, StrongConfig or IDFConfig fields), then clean/perturbed metrics on
    ``test``, with the best fixed bank pattern (chosen on the attack set) beside it."""
    run = make_attack(model, attack_set, method, device, **cfg)
    p.state.update(phase="screening the pattern bank" if method == "strong" else "attacking",
                   history=run.history, delta=run.delta, total=run.total, step=0, leaderboard=[], current=None)

    def on_step(ev):
        if ev.kind in ("screen", "round"):
            p.state["leaderboard"] = ev.metrics["leaderboard"]
        if method == "strong" and ev.kind == "step":
            p.state.update(current=run.current,
                           phase=f"refining start '{run.current}' (round {ev.metrics['round'] + 1})")
        p.state.update(delta=run.delta, step=ev.step, progress=0.95 * ev.step / max(1, run.total))

    res, secs = yield from drive(p, run, on_step)
    p.state["phase"] = f"evaluating on {len(test)} test images"
    yield
    m = timed(p, evaluate, model, test.images, test.labels, res.delta, test.num_classes, device=device,
              target=cfg.get("target"))
    if res.best_fixed is None:
        p.state["phase"] = "screening the pattern bank (the baseline)"
        yield
    fixed_name, fixed = timed(p, baseline_of, res, model, attack_set.float_images(), attack_set.labels,
                              cfg["eps"] / 255.0, cfg.get("norm", "linf"), cfg.get("beta", protocol.BETA),
                              cfg.get("target"), cfg.get("seed", 0), device)
    fixed_top1 = timed(p, top1_under, model, test, fixed, device)
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


def shipped(model, delta: torch.Tensor, test: ImageData, entry: dict, device=None) -> dict:
    """A zoo model's shipped δ on ``test`` as an :func:`attack` result (no attack is run): the metrics, the
    best fixed pattern the manifest names beside it, the picture grid's predictions."""
    m = evaluate(model, test.images, test.labels, delta, test.num_classes, device=device)
    fixed = None
    if entry.get("fixed_pattern"):
        pat = bank_pattern(entry["fixed_pattern"], tuple(delta.shape), float(entry["eps"]) / 255)
        fixed = {"name": entry["fixed_pattern"], "perturbed_top1": top1_under(model, test, pat, device)}
    a = entry.get("perturbation_attack", {})
    return {"metrics": m, "delta": delta, "history": [], "snapshots": [(0, delta)], "seconds": None, "steps": None,
            "stopped": False, "config": a, "attack": a.get("attack", "alg2"), "fixed": fixed,
            "preview": preview(model, test, delta, device=device)}


def hero_pictures(model, delta: torch.Tensor, test: ImageData, eps: float, n: int = 8, ncol: int = 4,
                  device=None) -> tuple[bytes, bytes, dict]:
    """The home page's picture: δ as a PNG (ε in 0-255 units), a PNG grid of ``n`` test images clean and with δ
    (red = wrong), and how many of them the model gets right each way ({"clean", "pert", "n"})."""
    pv = preview(model, test, delta, n=n, device=device)
    idx = pv["idx"]
    truth = test.labels[idx].tolist()
    grid = export.comparison_grid(test.float_images(idx), delta, test.classes, pv["clean_pred"], pv["pert_pred"],
                                  test.labels[idx], pv["pert_conf"], scale=3, ncol=ncol)
    return (export.png_bytes(export.delta_image(delta, eps / 255, 6)), export.png_bytes(grid),
            {"clean": sum(int(a == b) for a, b in zip(pv["clean_pred"], truth)),
             "pert": sum(int(a == b) for a, b in zip(pv["pert_pred"], truth)), "n": len(idx)})


# ---- sweeps (β, attack-set size) -------------------------------------------------------------------

def sweep(p: Progress, model, train: ImageData, test: ImageData, points: list[dict], device=None) -> Experiment:
    """Attacks at each point (dict with ``x``, ``repeat``, ``size`` and AttackConfig fields ``cfg``).

    Points are run in order; every finished one appends a row ``{x, repeat, size, steps,
    perturbed_top1, seconds}`` to ``p.state["rows"]`` (and to the result) as it arrives.
    """
    rows: list[dict] = []
    p.state.update(rows=rows, phase="sweeping", clean_top1=None)
    clean = timed(p, top1_under, model, test, None, device)
    p.state["clean_top1"] = clean
    for i, pt in enumerate(points):
        if p.stopping:
            break
        p.state["phase"] = pt.get("label", f"point {i + 1} of {len(points)}")
        run = make_attack(model, train.subset(pt["size"], seed=pt["repeat"]), "alg2", device,
                          **{**pt["cfg"], "snapshot_every": 0})
        p.state["history"] = run.history

        def on_step(ev, i=i, total=run.total):
            p.state["progress"] = (i + ev.step / max(1, total)) / len(points)

        res, secs = yield from drive(p, run, on_step)
        if res.stopped_early:
            break
        acc = timed(p, top1_under, model, test, res.delta, device)
        rows.append({"x": pt["x"], "repeat": pt["repeat"], "size": min(pt["size"], len(train)), "steps": res.steps,
                     "perturbed_top1": acc, "seconds": secs})
        yield
    return {"rows": rows, "clean_top1": clean, "complete": len(rows) == len(points)}


def beta_points(s: dict, **cfg) -> list[dict]:
    """The β sweep (Fig. 5) as sweep points: every β for repeat 0 first, then the next repeat (``cfg``: further
    AttackConfig fields for every attack)."""
    pts = []
    for r in range(s["repeats"]):
        for b in s["betas"]:
            pts.append({"x": b, "repeat": r, "size": s["attack_size"],
                        "label": f"β = {'∞' if math.isinf(b) else f'{b:g}'}, attack subset {r + 1} of {s['repeats']}",
                        "cfg": {"eps": s["eps"], "beta": b, "optimizer": s.get("optimizer", "pgd"),
                                "epochs": s["epochs"], "seed": r, **cfg}})
    return pts


def size_points(s: dict, n_train: int, batch_size: int = 128, **cfg) -> list[dict]:
    """The data-size sweep (Fig. 6): with ``s["steps"]`` the same number of steps for every size (epochs =
    steps / minibatches per epoch, to the nearest, at least 1), so only the data changes; with
    ``s["steps"] = None``, ``s["epochs"]`` for every size. ``cfg``: further AttackConfig fields."""
    pts = []
    for r in range(s["repeats"]):
        for n in s["sizes"]:
            n_eff = min(n, n_train)
            per_epoch = math.ceil(n_eff / batch_size)
            epochs = max(1, round(s["steps"] / per_epoch)) if s.get("steps") else s["epochs"]
            pts.append({"x": n_eff, "repeat": r, "size": n_eff,
                        "label": f"{n_eff} images, attack subset {r + 1} of {s['repeats']}",
                        "cfg": {"eps": s["eps"], "beta": protocol.BETA, "optimizer": protocol.OPTIMIZER,
                                "epochs": epochs, "seed": r, "batch_size": batch_size, **cfg}})
    return pts


# ---- optimizer race ---------------------------------------------------------------------------------

def race(p: Progress, model, attack_set: ImageData, test: ImageData, s: dict, device=None,
             optimizers=("sgd", "msgd", "adam", "pgd")) -> Experiment:
    """Every optimizer on the same images, one step each in turn, so the curves grow side by side."""
    runs = {o: make_attack(model, attack_set, "alg2", device, eps=s["eps"], beta=s["beta"], optimizer=o,
                           epochs=s["epochs"], seed=s["seed"], snapshot_every=0) for o in optimizers}
    its = {o: iter(r) for o, r in runs.items()}
    secs = {o: 0.0 for o in optimizers}
    p.state.update(phase="racing", histories={o: r.history for o, r in runs.items()},
                   deltas={o: r.delta for o, r in runs.items()})
    active = list(optimizers)
    total = sum(r.total for r in runs.values())
    while active:
        for o in list(active):
            run = runs[o]
            p.current = run
            if p.stopping:
                run.stop()
            t0 = time.perf_counter()
            ev = next(its[o])
            dt = time.perf_counter() - t0
            secs[o] += dt
            p.compute_seconds += dt
            p.state["deltas"][o] = run.delta
            if ev.kind == "done":
                active.remove(o)
            p.state["progress"] = 0.9 * sum(len(r.history) for r in runs.values()) / total
            yield
    p.current = None
    out = {}
    for o in optimizers:
        p.state["phase"] = f"evaluating {o.upper()}'s δ on {len(test)} test images"
        yield
        res = runs[o].result
        out[o] = {"history": list(res.history), "delta": res.delta, "seconds": secs[o], "steps": res.steps,
                  "perturbed_top1": timed(p, top1_under, model, test, res.delta, device)}
    return {"runs": out, "clean_top1": timed(p, top1_under, model, test, None, device)}


# ---- iDeepFool vs Alg. 2 ----------------------------------------------------------------------------

def idf_and_alg2(p: Progress, model, attack_set: ImageData, test: ImageData, s: dict, device=None,
                 idf_options: dict | None = None) -> Experiment:
    """Table 2: iDeepFool (Alg. 1) and then Alg. 2 on the same model and images; time and accuracy.

    ``idf_options``: further IDFConfig fields (e.g. ``candidates``, ``max_iter``) for a quicker iDeepFool."""
    out: dict[str, dict] = {}
    p.state.update(seconds={}, histories={}, phase="iDeepFool")
    plan = [("idf", {"xi": 1.0, **(idf_options or {}), "eps": s["eps"], "max_passes": s["idf_passes"],
                     "batch_size": s["idf_batch"]}),
            ("alg2", {"eps": s["eps"], "epochs": s["alg2_epochs"], "beta": protocol.BETA,
                      "optimizer": protocol.OPTIMIZER, "snapshot_every": 0})]
    for i, (method, cfg) in enumerate(plan):
        if p.stopping:
            break
        p.state["phase"] = "iDeepFool (Alg. 1)" if method == "idf" else "Alg. 2 (sign gradient, β = 9)"
        run = make_attack(model, attack_set, method, device, **cfg)
        p.state["histories"][method] = run.history
        p.state["seconds"][method] = 0.0
        t_start = p.compute_seconds

        def on_step(ev, i=i, run=run, t_start=t_start, method=method):
            p.state["progress"] = 0.5 * i + 0.45 * ev.step / max(1, run.total)
            p.state["seconds"][method] = p.compute_seconds - t_start
            p.state["delta"] = run.delta

        res, secs = yield from drive(p, run, on_step)
        p.state["seconds"][method] = secs
        p.state["phase"] = f"evaluating on {len(test)} test images"
        yield
        m = timed(p, evaluate, model, test.images, test.labels, res.delta, test.num_classes, device=device)
        out[method] = {"seconds": secs, "steps": res.steps, "delta": res.delta, "history": list(res.history),
                       "perturbed_top1": m["perturbed_top1"], "clean_top1": m["clean_top1"],
                       "fooling_ratio": m["fooling_ratio"], "stopped": res.stopped_early,
                       "backwards": getattr(run, "backwards", res.steps)}
    return out


# ---- universal adversarial training -----------------------------------------------------------------

def train_and_attack(p: Progress, arch: str, train: ImageData, test: ImageData, s: dict, device=None) -> Experiment:
    """Train each algorithm in ``s["algorithms"]``, then attack each trained model from scratch (the strong
    attack, β = 9) and measure clean and robust test accuracy, with the best fixed pattern beside it."""
    algos = list(s["algorithms"])
    data = train.subset(s["train_size"], seed=s["seed"])
    hist: dict[str, list] = {}
    models: dict[str, torch.nn.Module] = {}
    train_deltas: dict[str, torch.Tensor] = {}
    train_secs: dict[str, float] = {}
    passes: dict[str, dict] = {}
    p.state.update(histories=hist, train_deltas=train_deltas, phase="training", rows=[])
    n_units = 2 * len(algos)
    for i, algo in enumerate(algos):
        if p.stopping:
            break
        pooled = ALGORITHMS[algo].overrides.get("delta_pool", 1) > 1      # "uat_pool": Alg. 3 with a pool of δs
        rule = "fgsm" if pooled and s["delta_rule"] == "adam" else s["delta_rule"]
        cfg = train_config(train.name, algo, epochs=s["epochs"], eps=s["eps"], delta_rule=rule, seed=s["seed"],
                           snapshot_every=5, track_every=5)
        trainer = make_trainer(arch, data, cfg, device)
        hist[algo] = trainer.history
        p.state["phase"] = f"training {algo} ({i + 1} of {len(algos)})"
        p.state["training"] = algo

        def on_train_step(ev, i=i, trainer=trainer, algo=algo):
            p.state["progress"] = (i + ev.step / max(1, trainer.total)) / n_units
            if trainer.cfg.algorithm in ("uat", "lowcost"):
                train_deltas[algo] = trainer.pool[0].detach()

        res, secs = yield from drive(p, trainer, on_train_step)
        models[algo] = res.model.eval()
        train_secs[algo], passes[algo] = secs, dict(res.passes)
        if res.delta is not None:
            train_deltas[algo] = res.delta
        if res.stopped_early:
            break
    rows: list[dict] = []
    attack_deltas: dict[str, torch.Tensor] = {}
    p.state["attack_deltas"] = attack_deltas
    for j, algo in enumerate(models):
        if p.stopping:
            break
        p.state["phase"] = f"attacking the {algo} model from scratch (the strong attack)"
        run = protocol.attack_run(models[algo], train.subset(s["attack_size"], seed=s["seed"]), "strong", s["eps"],
                                  s["attack_epochs"], s["seed"], device)

        def on_attack_step(ev, j=j, run=run):
            p.state["progress"] = (len(algos) + j + ev.step / max(1, run.total)) / n_units

        res, _ = yield from drive(p, run, on_attack_step)
        if res.stopped_early:
            break
        m = timed(p, evaluate, models[algo], test.images, test.labels, res.delta, test.num_classes,
                  device=device)
        attack_deltas[algo] = res.delta
        fixed_top1 = timed(p, top1_under, models[algo], test, res.best_fixed, device)
        rows.append({"name": algo, "algorithm": algo, "clean_top1": m["clean_top1"],
                     "robust_top1": m["perturbed_top1"], "fixed_top1": fixed_top1, "train_seconds": train_secs[algo],
                     "forward": passes[algo]["forward"], "backward": passes[algo]["backward"]})
        p.state["rows"] = rows
        yield
    return {"histories": {a: list(h) for a, h in hist.items()}, "rows": rows, "attack_deltas": attack_deltas,
            "train_deltas": {a: d.detach().cpu().clone() for a, d in train_deltas.items()}, "models": models,
            "source": "live"}


# ---- transfer ---------------------------------------------------------------------------------------

def transfer(p: Progress, models: dict, deltas: dict, test: ImageData, device=None) -> Experiment:
    """Accuracy of every model (columns) under every δ (rows), one cell per step, plus clean accuracy."""
    src, dst = list(deltas), list(models)
    matrix = [[None] * len(dst) for _ in src]
    p.state.update(matrix=matrix, sources=src, targets=dst, phase="evaluating")
    clean = {}
    cells = len(src) * len(dst) + len(dst)
    done = 0
    for d in dst:
        clean[d] = timed(p, top1_under, models[d], test, None, device)
        done += 1
        p.state["progress"] = done / cells
        yield
    for i, s in enumerate(src):
        for j, d in enumerate(dst):
            if p.stopping:
                return {"matrix": matrix, "sources": src, "targets": dst, "clean": clean, "complete": False}
            matrix[i][j] = timed(p, top1_under, models[d], test, deltas[s], device)
            done += 1
            p.state["progress"] = done / cells
            p.state["phase"] = f"δ of {s} on {d}"
            yield
    return {"matrix": matrix, "sources": src, "targets": dst, "clean": clean, "complete": True}


# ---- the pattern bank -------------------------------------------------------------------------------

def bank(p: Progress, model, test: ImageData, s: dict, device=None) -> Experiment:
    """Test accuracy under every fixed pattern of the bank at ε (a block of patterns per step), then the
    patterns sorted from strongest to weakest."""
    bank = pattern_bank(test.shape, s["eps"] / 255.0, random=s.get("random", 4), seed=s.get("seed", 0))
    clean = timed(p, top1_under, model, test, None, device)
    accs: list[float] = []
    p.state.update(phase="scoring the bank", clean=clean, names=bank.names, accs=accs)
    block = max(1, 2048 // max(1, len(test)))
    for i in range(0, len(bank), block):
        if p.stopping:
            break
        sc = timed(p, score_bank, model, bank.patterns[i:i + block], test.images, test.labels, s["beta"],
                   chunk=256, device=device)
        accs.extend(sc.acc.tolist())
        p.state.update(progress=len(accs) / len(bank), phase=f"scored {len(accs)} of {len(bank)} patterns")
        yield
    order = sorted(range(len(accs)), key=lambda k: accs[k])
    return {"names": [bank.names[k] for k in order], "accs": [accs[k] for k in order], "clean": clean,
            "patterns": bank.patterns[order].clone(), "complete": len(accs) == len(bank), "n": len(test)}


# ---- the attack lab's settings ----------------------------------------------------------------------

def lab_config(s: dict, n_images: int, batch_size: int = 128) -> dict:
    """AttackConfig (or, with s["strong"], StrongConfig) fields of the attack lab's settings, with about
    30 δ snapshots for the scrubber."""
    total = s["epochs"] * math.ceil(min(s["attack_size"], n_images) / batch_size)
    cfg = {"eps": s["eps"], "beta": s["beta"], "optimizer": s["optimizer"], "epochs": s["epochs"], "norm": s["norm"],
           "target": s["target"], "seed": s["seed"], "batch_size": batch_size, "snapshot_every": max(1, total // 30)}
    if s.get("strong"):
        return {**cfg, "tau0": s["step_size"]}
    return {**cfg, "step_size": s["step_size"]}


# ---- one-call helpers (the notebooks' API), driving the generators above ---------------------------------

def _rows(fn, *args, **kw) -> Iterator[dict]:
    """Drive a sweep, yielding each row of ``p.state["rows"]`` as it arrives."""
    p = Progress()
    gen = fn(p, *args, **kw)
    seen = 0
    while True:
        try:
            next(gen)
        except StopIteration:
            break
        rows = p.state.get("rows", [])
        while seen < len(rows):
            yield rows[seen]
            seen += 1
    for r in p.state.get("rows", [])[seen:]:
        yield r


def attack_and_eval(model, attack_set: ImageData, test: ImageData, method: str = "alg2", device=None, **cfg) -> dict:
    """One attack built on ``attack_set``, evaluated on ``test``: the metrics, δ, history, seconds, steps,
    snapshots, config and the best fixed pattern beside it (``fixed``)."""
    out = run(attack, model, attack_set, test, cfg, method, device)
    return {**out.pop("metrics"), **out}


def beta_sweep(model, train: ImageData, test: ImageData, betas=(1, 3, 5, 9, 15, math.inf), repeats: int = 3,
               attack_size: int = 500, device=None, **cfg) -> Iterator[dict]:
    """Fig. 5: one row per finished attack, ``{beta, repeat, size, steps, perturbed_top1, seconds}``, over
    ``repeats`` random attack subsets (seeds 0..r-1); ``cfg``: further AttackConfig fields (eps, epochs, …)."""
    s = {"betas": list(betas), "repeats": repeats, "attack_size": attack_size, "epochs": cfg.pop("epochs", 10),
         "eps": cfg.pop("eps", 8.0), "optimizer": cfg.pop("optimizer", "pgd")}
    for r in _rows(sweep, model, train, test, beta_points(s, **cfg), device):
        yield {"beta": r["x"], **r}


def datasize_sweep(model, train: ImageData, test: ImageData, sizes=(50, 100, 250, 500, 1000), repeats: int = 2,
                   device=None, steps: int | None = None, **cfg) -> Iterator[dict]:
    """Fig. 6: one row per finished attack, ``{size, repeat, steps, perturbed_top1, seconds}``.

    With ``steps`` every size gets about the same number of ascent steps (:func:`size_points`), so that a
    small attack set is not also a short run; otherwise ``epochs`` (in ``cfg``) is fixed."""
    s = {"sizes": list(sizes), "repeats": repeats, "steps": steps, "epochs": cfg.pop("epochs", 10),
         "eps": cfg.pop("eps", 8.0)}
    for r in _rows(sweep, model, train, test, size_points(s, len(train), cfg.pop("batch_size", 128), **cfg), device):
        yield {**r, "size": r["x"]}


def idf_vs_alg2(model, attack_set: ImageData, test: ImageData, eps: float = 8.0, passes: int = 5,
                device=None, **idf_options) -> dict:
    """Table 2: iDeepFool and Alg. 2 on the same model and images, the same number of passes.

    ``idf_options``: further IDFConfig fields (e.g. ``candidates``, ``max_iter``) for a quicker iDeepFool."""
    s = {"eps": eps, "idf_passes": passes, "alg2_epochs": passes, "idf_batch": idf_options.pop("batch_size", 128)}
    return run(idf_and_alg2, model, attack_set, test, s, device, idf_options=idf_options)


def transfer_matrix(models: dict, deltas: dict, test: ImageData, device=None) -> tuple[list, list, list]:
    """Accuracy of every model (columns) under every δ (rows). models/deltas: name -> model / δ."""
    out = run(transfer, models, deltas, test, device)
    return out["matrix"], out["sources"], out["targets"]


def summarize(rows: list[dict], key: str, value: str = "perturbed_top1") -> tuple[list, list, list]:
    """(xs, means, stds) over repeats, in the order the xs first appear."""
    xs: list = []
    groups: dict[Any, list] = {}
    for r in rows:
        if r[key] not in groups:
            xs.append(r[key])
            groups[r[key]] = []
        groups[r[key]].append(r[value])
    means = [sum(v) / len(v) for v in (groups[x] for x in xs)]
    stds = [torch.tensor(groups[x]).std(unbiased=False).item() if len(groups[x]) > 1 else 0.0 for x in xs]
    return xs, means, stds

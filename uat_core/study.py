"""The vulnerability study (issue 22): CIFAR-10 classifiers that differ from one base recipe in one factor
at a time, each measured with the project's protocol (``protocol``: ε = 8, 2,000 stratified training images to
build the attack, all 10,000 test images to score it):

    clean        top-1 on the test split, no perturbation
    train        top-1 on 10,000 stratified training images (no augmentation): how near convergence
    alg2         the paper's Alg. 2 from δ = 0 (β = 9, sign steps, 10 epochs)
    fixed        the best fixed pattern of the structured bank (stripes, checkerboards, colours at ±ε)
    strong       the strong multi-start attack (the project's robustness figure)

``bench/vulnerability_study.py`` runs it; the figures land in ``docs/study/<row>.json``, which the app, the
notebooks and ``docs/study.md`` read through :func:`load_results`.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]          # the project (docs/ and runs/ live here)
OUT = ROOT / "docs" / "study"
RUNS = ROOT / "runs" / "study"

EPS = 8                 # 0-255 units, the paper's CIFAR-10 ε
TRAIN_PROBE = 10_000    # stratified training images scored after training (convergence)

# The base recipe: today's zoo architecture (ResNet-20, projection shortcuts) at a CPU-sized budget.
BASE = ["--model", "resnet20", "--epochs", "10", "--batch-size", "256", "--schedule", "onecycle", "--lr", "0.2",
        "--weight-decay", "5e-4"]


def _with(**changes) -> list[str]:
    """BASE with flags replaced or added (``no_augment=True`` adds a bare flag)."""
    args = list(BASE)
    for k, v in changes.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            args.append(flag)
            continue
        if flag in args:
            args[args.index(flag) + 1] = str(v)
        else:
            args += [flag, str(v)]
    return args


# row -> (factor, what changes, where it can run, training arguments)
ROWS: dict[str, tuple[str, str, str, list[str]]] = {
    "base": ("—", "ResNet-20, 10 epochs, batch 256, one-cycle lr 0.2, crop + flip", "cpu", BASE),
    "ls01": ("label smoothing", "0.1", "cpu", _with(label_smoothing=0.1)),
    "ls02": ("label smoothing", "0.2", "cpu", _with(label_smoothing=0.2)),
    "identity": ("shortcut", "identity (option A) instead of 1×1 projections", "cpu", _with(shortcut="identity")),
    "noaug": ("augmentation", "none (no crop, no flip)", "cpu", _with(no_augment=True)),
    "wd0": ("weight decay", "0 instead of 5e-4", "cpu", _with(weight_decay=0)),
    "e30": ("training length", "30 epochs instead of 10", "cpu", _with(epochs=30)),
    "bs64": ("batch size", "64 (lr 0.05) instead of 256 (lr 0.2)", "cpu", _with(batch_size=64, lr=0.05)),
    "step": ("schedule", "step (÷10 at 50%, 75%), lr 0.1, instead of one-cycle", "cpu", _with(schedule="step", lr=0.1)),
    # capacity and training to convergence: GPU rows (the paper's model is the last one)
    "w4_e100": ("capacity + length", "ResNet-20 ×4 wide (4.3 M), 100 epochs", "gpu",
                _with(width=4, epochs=100)),
    "wrn16_8_e100": ("capacity + length", "WRN-16-8 (11 M), 100 epochs", "gpu",
                     _with(model="wrn16_8", epochs=100)),
    "wrn32_10_e200": ("capacity + length", "the paper's WRN 32-10 (46 M), 200 epochs, step schedule", "gpu",
                      _with(model="wrn32_10", epochs=200, batch_size=128, schedule="step", lr=0.1)),
}


def command(row: str) -> str:
    """The exact training command of ``row`` (what a user types)."""
    return ("python -m uat_core train --dataset cifar10 --eps 8 --seed 0 --no-report "
            + " ".join(ROWS[row][3]) + f" --out runs/study/{row}")


def train(row: str, threads: int) -> Path:
    """Train (or resume, or reuse) ``row`` in a child process; returns its run folder."""
    out = RUNS / row
    if (out / "model.pt").is_file() and (out / "metrics.json").is_file():
        return out
    argv = [sys.executable, "-m", "uat_core", "train", "--dataset", "cifar10", "--eps", str(EPS), "--seed", "0",
            "--no-report", *ROWS[row][3], "--out", str(out)]
    if (out / "checkpoint.pt").is_file():
        argv.append("--resume")
    elif out.exists():
        argv.append("--force")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    print(f"[{row}] $ {command(row)}", file=sys.stderr, flush=True)
    subprocess.run(argv, cwd=ROOT, env=env, check=True)
    return out


def measure(row: str, run: Path, threads: int) -> dict:
    """The protocol's figures for the trained model in ``run`` (see the module docstring)."""
    import torch

    from uat_core import protocol
    from uat_core.attacks.bank import baseline_of
    from uat_core.checkpoint import load_checkpoint
    from uat_core.data import load_dataset
    from uat_core.evaluation import evaluate

    torch.set_num_threads(threads)
    model, meta = load_checkpoint(run / "model.pt")
    metrics = json.loads((run / "metrics.json").read_text())
    attack_set = load_dataset("cifar10", "train", None, limit=2000, seed=protocol.SEED, progress=False)
    probe = load_dataset("cifar10", "train", None, limit=TRAIN_PROBE, seed=1, progress=False)
    test = load_dataset("cifar10", "test", None, progress=False)
    t0 = time.perf_counter()

    def top1(data, delta=None) -> float:
        return evaluate(model, data.images, data.labels, delta, data.num_classes)["perturbed_top1" if delta is not None
                                                                                 else "clean_top1"]
    alg2 = protocol.attack_run(model, attack_set, "alg2", EPS).run(progress=True, desc=f"[{row}] Alg. 2")
    strong = protocol.attack_run(model, attack_set, "strong", EPS).run(progress=True, desc=f"[{row}] strong")
    fixed_name, fixed = baseline_of(strong, model, attack_set.float_images(), attack_set.labels, EPS / 255.0)
    res = {"row": row, "factor": ROWS[row][0], "change": ROWS[row][1], "arch": meta["arch"],
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
           "command": command(row), "train_seconds": round(metrics["seconds"], 1),
           "epochs": metrics["epochs"],
           "clean_top1": top1(test), "train_top1": top1(probe),
           "alg2_top1": top1(test, alg2.delta), "fixed_top1": top1(test, fixed), "fixed_pattern": fixed_name,
           "strong_top1": top1(test, strong.delta), "strong_start": strong.config.get("start", "zero"),
           "eps": EPS, "attack_size": len(attack_set), "test_size": len(test),
           "measure_seconds": round(time.perf_counter() - t0, 1),
           "machine": f"{platform.machine()} CPU, {threads} thread(s) a row", "torch": torch.__version__,
           "date": _dt.date.today().isoformat()}
    torch.save({"strong": strong.delta.cpu(), "alg2": alg2.delta.cpu(), "fixed": fixed.cpu(), "fixed_name": fixed_name},
               run / "deltas.pt")
    return res


def table(results: list[dict]) -> str:
    """The Markdown table of measured rows (percent, one decimal), base first, then by strong-attack figure."""
    head = ("| row | factor | change | clean | train | Alg. 2 (δ = 0) | best fixed pattern | strong attack | "
            "train time |\n|---|---|---|---:|---:|---:|---:|---:|---:|\n")
    order = ordered(results)
    lines = [f"| `{r['row']}` | {r['factor']} | {r['change']} | {100 * r['clean_top1']:.1f} | "
             f"{100 * r['train_top1']:.1f} | {100 * r['alg2_top1']:.1f} | {100 * r['fixed_top1']:.1f} | "
             f"**{100 * r['strong_top1']:.1f}** | {r['train_seconds'] / 60:.0f} min |" for r in order]
    return head + "\n".join(lines) + "\n"


def ordered(results: list[dict]) -> list[dict]:
    """The base row first, then the others from the most vulnerable (lowest strong-attack figure) up."""
    return sorted(results, key=lambda r: (r["row"] != "base", r["strong_top1"]))


def load_results(folder: Path | None = None) -> list[dict]:
    """Every measured row (``docs/study/<row>.json``), in :func:`ordered` order."""
    return ordered([json.loads(p.read_text()) for p in sorted((folder or OUT).glob("*.json"))])

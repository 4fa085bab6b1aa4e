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

import torch

from ..engine.attacks.bank import baseline_of
from ..engine.checkpoint import load_checkpoint
from ..engine.data import load_dataset
from ..engine.device import pick_device
from ..engine.evaluation import evaluate
from . import protocol
from .runs import cli_flags

ROOT = Path(__file__).resolve().parents[2]          # the project (docs/ and runs/ live here)
OUT = ROOT / "docs" / "study"
RUNS = ROOT / "runs" / "study"

EPS = 8                 # 0-255 units, the paper's CIFAR-10 ε
TRAIN_PROBE = 10_000    # stratified training images scored after training (convergence)

# The base recipe: today's zoo architecture (ResNet-20, projection shortcuts) at a CPU-sized budget. A row's recipe
# is fields: ``model``, ``width`` and ``shortcut`` (models.arch_name) and TrainConfig's (checked by test_study).
BASE: dict = dict(model="resnet20", epochs=10, batch_size=256, schedule="onecycle", lr=0.2, weight_decay=5e-4)


def _with(**changes) -> dict:
    """BASE with fields replaced or added."""
    return {**BASE, **changes}


# row -> (factor, what changes, where it can run, training arguments)
ROWS: dict[str, tuple[str, str, str, dict]] = {
    "base": ("—", "ResNet-20, 10 epochs, batch 256, one-cycle lr 0.2, crop + flip", "cpu", BASE),
    "ls01": ("label smoothing", "0.1", "cpu", _with(label_smoothing=0.1)),
    "ls02": ("label smoothing", "0.2", "cpu", _with(label_smoothing=0.2)),
    "identity": ("shortcut", "identity (option A) instead of 1×1 projections", "cpu", _with(shortcut="identity")),
    "noaug": ("augmentation", "none (no crop, no flip)", "cpu", _with(augment=False)),
    "wd0": ("weight decay", "0 instead of 5e-4", "cpu", _with(weight_decay=0)),
    "e30": ("training length", "30 epochs instead of 10", "cpu", _with(epochs=30)),
    "bs64": ("batch size", "64 (lr 0.05) instead of 256 (lr 0.2)", "cpu", _with(batch_size=64, lr=0.05)),
    # label smoothing at a longer recipe: does the most vulnerable change stay so when trained 3× longer?
    "ls01_e30": ("label smoothing + length", "0.1, and 30 epochs instead of 10", "cpu",
                 _with(label_smoothing=0.1, epochs=30)),
    "step": ("schedule", "step (÷10 at 50%, 75%), lr 0.1, instead of one-cycle", "cpu", _with(schedule="step", lr=0.1)),
    # capacity and training to convergence: GPU rows (the paper's model is the last one)
    "w4_e100": ("capacity + length", "ResNet-20 ×4 wide (4.3 M), 100 epochs", "gpu",
                _with(width=4, epochs=100)),
    "wrn16_8_e100": ("capacity + length", "WRN-16-8 (11 M), 100 epochs", "gpu",
                     _with(model="wrn16_8", epochs=100)),
    "wrn32_10_e200": ("capacity + length", "the paper's WRN 32-10 (46 M), 200 epochs, step schedule", "gpu",
                      _with(model="wrn32_10", epochs=200, batch_size=128, schedule="step", lr=0.1)),
}


# rows that change two factors of the base: row -> (the row it extends by one factor, the row that makes the same
# change to the base), so the summary can say how the change fares on a longer recipe
EXTENDS: dict[str, tuple[str, str]] = {"ls01_e30": ("e30", "ls01")}
# rows that make another row's change stronger: row -> the weaker row (the summary says whether more of it did more)
STRONGER: dict[str, str] = {"ls02": "ls01"}


def command(row: str) -> str:
    """The exact training command of ``row`` (what a user types)."""
    return ("python -m uat_core train --dataset cifar10 --eps 8 --seed 0 --no-report "
            + " ".join(cli_flags(ROWS[row][3])) + f" --out runs/study/{row}")


def train(row: str, threads: int) -> Path:
    """Train (or resume, or reuse) ``row`` in a child process; returns its run folder."""
    out = RUNS / row
    if (out / "model.pt").is_file() and (out / "metrics.json").is_file():
        return out
    argv = [sys.executable, "-m", "uat_core", "train", "--dataset", "cifar10", "--eps", str(EPS), "--seed", "0",
            "--no-report", *cli_flags(ROWS[row][3]), "--out", f"runs/study/{row}"]   # relative: no machine path
    if (out / "checkpoint.pt").is_file():
        argv.append("--resume")
    elif out.exists():
        argv.append("--force")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    print(f"[{row}] $ {command(row)}", file=sys.stderr, flush=True)
    subprocess.run(argv, cwd=ROOT, env=env, check=True)
    return out


def measure(row: str, run: Path, threads: int, device: str | None = None) -> dict:
    """The protocol's figures for the trained model in ``run`` (see the module docstring); ``device``: auto
    (CUDA when present) | cpu | cuda[:N]. The three δs are saved beside the model as ``deltas.pt``."""
    torch.set_num_threads(threads)
    dev = pick_device(device)
    model, meta = load_checkpoint(run / "model.pt", device=dev)
    metrics = json.loads((run / "metrics.json").read_text())
    attack_set = load_dataset("cifar10", "train", None, limit=2000, seed=protocol.SEED, progress=False)
    probe = load_dataset("cifar10", "train", None, limit=TRAIN_PROBE, seed=1, progress=False)
    test = load_dataset("cifar10", "test", None, progress=False)
    t0 = time.perf_counter()

    def top1(data, delta=None) -> float:
        m = evaluate(model, data.images, data.labels, delta, data.num_classes, device=dev)
        return m["clean_top1" if delta is None else "perturbed_top1"]
    alg2 = protocol.attack_run(model, attack_set, "alg2", EPS, device=dev).run(progress=True, desc=f"[{row}] Alg. 2")
    strong = protocol.attack_run(model, attack_set, "strong", EPS, device=dev).run(progress=True,
                                                                                   desc=f"[{row}] strong")
    fixed_name, fixed = baseline_of(strong, model, attack_set.float_images(), attack_set.labels, EPS / 255.0,
                                    device=dev)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        f"{platform.machine()} CPU, {threads} thread(s) a row"
    res = {"row": row, "factor": ROWS[row][0], "change": ROWS[row][1], "arch": meta["arch"],
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
           "command": command(row), "train_seconds": round(metrics["seconds"], 1),
           "epochs": metrics["epochs"],
           "clean_top1": top1(test), "train_top1": top1(probe),
           "alg2_top1": top1(test, alg2.delta), "fixed_top1": top1(test, fixed), "fixed_pattern": fixed_name,
           "strong_top1": top1(test, strong.delta), "strong_start": strong.config.get("start", "zero"),
           "eps": EPS, "attack_size": len(attack_set), "test_size": len(test),
           "measure_seconds": round(time.perf_counter() - t0, 1),
           "machine": where, "torch": torch.__version__, "date": _dt.date.today().isoformat()}
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


def zoo_reference(results_json: Path | None = None) -> dict | None:
    """The zoo's natural CIFAR-10 model in the study's terms, from docs/results.json (the same protocol at ε = 8),
    or None where the report has no such row."""
    path = results_json or ROOT / "docs" / "results.json"
    return reference_from(json.loads(path.read_text())) if path.is_file() else None


def reference_from(report: dict) -> dict | None:
    """:func:`zoo_reference` of a report's data (``report.write_report``'s JSON)."""
    rows = [r for r in report["rows"] if r["algorithm"] == "natural"]
    if not rows or f"robust_top1@{EPS}" not in rows[0]:
        return None
    r = rows[0]
    return {"row": "zoo natural", "recipe": r["recipe"], "trained_on": r["trained_on"],
            "clean_top1": r["clean_top1"], "alg2_top1": r[f"alg2_top1@{EPS}"], "fixed_top1": r[f"fixed_top1@{EPS}"],
            "strong_top1": r[f"robust_top1@{EPS}"]}


def effects(results: list[dict]) -> list[str]:
    """One sentence a row: how far its one change moved clean accuracy and the strong attack's figure from the
    base row (in points), from the most vulnerable row up."""
    base = next((r for r in results if r["row"] == "base"), None)
    if base is None:
        return []
    out = []
    for r in sorted((r for r in results if r["row"] != "base"), key=lambda r: r["strong_top1"]):
        ds = 100 * (r["strong_top1"] - base["strong_top1"])
        dc = 100 * (r["clean_top1"] - base["clean_top1"])
        verb = "more vulnerable than" if ds < -1 else ("less vulnerable than" if ds > 1 else "about as vulnerable as")
        out.append(f"`{r['row']}` ({r['factor']}: {r['change']}): {verb} the base, {ds:+.1f} points under the "
                   f"strong attack ({100 * r['strong_top1']:.1f}%) at {dc:+.1f} points of clean accuracy "
                   f"({100 * r['clean_top1']:.1f}%); the best fixed pattern {100 * r['fixed_top1']:.1f}%.")
    return out


def markdown(results: list[dict], finding: str = "", reference: dict | None = None, command_line: str = "") -> str:
    """docs/study.md: the question, the protocol, the table, each factor's effect, the finding, the GPU rows."""
    when = max((r["date"] for r in results), default=_dt.date.today().isoformat())
    machines = sorted({r["machine"] for r in results})
    lines = [
        "# What makes a CIFAR-10 classifier fall to one pattern: the vulnerability study",
        "",
        f"Generated by `{command_line}` (figures of {when}; machines: {', '.join(machines) or '–'}). Do not edit "
        "by hand: the rows live in `uat_core/recipes/study.py`, their figures in `docs/study/<row>.json`.",
        "",
        "**The question.** The paper's natural WRN 32-10 (46 M parameters, about 200 epochs, 95.2% clean) falls to "
        "9.2% under one universal perturbation at ε = 8. This project's natural ResNet-20 keeps far more, even "
        "under the strong attack, and even when the attack is built on the test images themselves "
        "(docs/benchmarks.md). So the attack is not what differs: the classifiers are. Each row below trains a "
        "CIFAR-10 classifier that differs from the `base` row in **one** factor.",
        "",
        "**The protocol** (`uat_core.recipes.protocol`, the same as docs/results.md): ε = 8; the attacks are built "
        "on 2,000 stratified training images and scored on all 10,000 test images of the shared JPEG copy of CIFAR-10. "
        "*clean*: no perturbation. *train*: top-1 on 10,000 stratified training images without augmentation "
        "(how near convergence). *Alg. 2*: the paper's attack from δ = 0 (β = 9, sign steps, 10 epochs). "
        "*best fixed pattern*: the strongest stripe, checkerboard or colour pattern of the bank at ±ε (the "
        "baseline). *strong attack*: the multi-start search, the project's robustness figure.",
        "",
        "## The table (top-1 %, lower is more vulnerable)",
        "",
        table(results).rstrip(),
        "",
        "*train time* is wall-clock as measured, often with two rows training side by side (one thread each) beside "
        "other work on the same two cores: compare it only roughly.",
    ]
    if reference:
        lines += ["", f"For reference, on the same protocol: the zoo's natural model (`{reference['recipe']}`, "
                      f"trained on {reference['trained_on']}) is right on {100 * reference['clean_top1']:.1f}% clean, "
                      f"{100 * reference['alg2_top1']:.1f}% under Alg. 2, {100 * reference['fixed_top1']:.1f}% "
                      f"under the best fixed pattern and {100 * reference['strong_top1']:.1f}% under the strong "
                      "attack (docs/results.md); the paper's WRN 32-10: 95.2% clean, 9.2% attacked."]
    eff = effects(results)
    if eff:
        lines += ["", "## What each factor did", ""] + [f"- {e}" for e in eff]
    if finding:
        lines += ["", "## The finding", "", finding.strip()]
    lines += ["", "## Rows a CPU cannot reach (commands for a GPU)", "",
              "Capacity and training to convergence are the factors left untested here: each of these rows takes "
              "hours to days on two CPU cores. On one GPU, train and measure a row with "
              "`python bench/vulnerability_study.py --rows ROW` (it trains with the command below, then measures "
              "with the protocol on the GPU):", ""]
    for row, (factor, change, where, _) in ROWS.items():
        if where == "gpu":
            lines += [f"- `{row}` ({factor}: {change}):", "", "  ```bash", f"  {command(row)}", "  ```", ""]
    lines += ["## Every row's command", ""]
    for r in results:
        lines += [f"- `{r['row']}` ({r['train_seconds'] / 60:.0f} min of training, {r['measure_seconds'] / 60:.0f} "
                  f"min of measurement on {r['machine']}): `{r['command']}`"
                  + (f". {r['note']}" if r.get("note") else "")]
    return "\n".join(lines).rstrip() + "\n"


def summary(results: list[dict], reference: dict | None = None) -> str:
    """The study's finding in a few sentences a student can follow, every figure from ``results`` (and the zoo's
    natural model, ``reference``); an empty string without a base row."""
    base = next((r for r in results if r["row"] == "base"), None)
    if base is None:
        return ""

    def pct(v):
        return f"{100 * v:.1f}%"
    others = [r for r in results if r["row"] != "base"]
    parts = [f"A ResNet-20 trained for {base['epochs']} epochs on a CPU (the `base` row) is right on "
             f"{pct(base['clean_top1'])} "
             f"of the test images and keeps only {pct(base['strong_top1'])} once one pattern is added to all of them "
             f"(ε = 8)."]
    longer = next((r for r in results if r["row"] == "e30"), None)
    if reference:
        harder = reference["strong_top1"] > base["strong_top1"] + 0.01
        parts.append(f"The zoo's natural model has the same architecture and a longer recipe (`{reference['recipe']}`, "
                     f"on {reference['trained_on']}): it is right on {pct(reference['clean_top1'])} and keeps "
                     f"{pct(reference['strong_top1'])} under the same attack, "
                     + ("so the longer-trained, more accurate model is the *harder* one to fool. That comparison "
                        "changes epochs, batch and learning rate at once: a hint, not a controlled result"
                        + (" (the `e30` row changes the length alone)." if longer is None else ".") if harder else
                        "no harder to fool than the base."))
    if longer is not None:
        d = 100 * (longer["strong_top1"] - base["strong_top1"])
        verdict = ("harder to fool" if d > 1 else "easier to fool" if d < -1 else "about as easy to fool")
        parts.append(f"The `e30` row is the controlled test: the base recipe trained {longer['epochs']} epochs instead "
                     f"of {base['epochs']}, nothing else changed, reaches {pct(longer['clean_top1'])} clean "
                     f"({pct(longer['train_top1'])} on training images) and keeps {pct(longer['strong_top1'])} "
                     f"({d:+.1f} points): training longer alone made the same network {verdict}. At this scale, a "
                     "classifier closer to convergence is *less* vulnerable, the opposite of what the paper's picture "
                     "might suggest; capacity is the factor left untested.")
    by_row = {r["row"]: r for r in results}
    for row, (parent, same) in EXTENDS.items():
        if row in by_row and parent in by_row:
            r, p, single = by_row[row], by_row[parent], by_row.get(same)
            change = r["factor"].split(" + ")[0]
            d = 100 * (r["strong_top1"] - p["strong_top1"])
            parts.append(f"`{row}` adds {change} to the `{parent}` recipe: it keeps {pct(r['strong_top1'])} against "
                         f"{pct(p['strong_top1'])} ({d:+.1f} points) at {pct(r['clean_top1'])} clean"
                         + (f", where the same change moved the {base['epochs']}-epoch base by "
                            f"{100 * (single['strong_top1'] - base['strong_top1']):+.1f} points (`{same}`)"
                            if single is not None else "")
                         + f"; the length of training moves the figure far more than {change} does.")
    for row, weaker in STRONGER.items():
        if row in by_row and weaker in by_row:
            r, w = by_row[row], by_row[weaker]
            d = 100 * (r["strong_top1"] - w["strong_top1"])
            parts.append(f"`{row}` takes {r['factor']} further ({r['change']} instead of {w['change']}): it keeps "
                         f"{pct(r['strong_top1'])} against {pct(w['strong_top1'])} ({d:+.1f} points), so more of it "
                         + ("made the model easier still to fool." if d < -1 else
                            "did *not* make the model easier to fool: here the effect did not grow with the dose."
                            if d > 1 else "changed little."))
    singles = [r for r in others if r["row"] not in EXTENDS]
    if singles:
        worst = min(singles, key=lambda r: r["strong_top1"])
        best = max(singles, key=lambda r: r["strong_top1"])
        d_worst = 100 * (worst["strong_top1"] - base["strong_top1"])
        d_best = 100 * (best["strong_top1"] - base["strong_top1"])
        if d_worst < -1:
            parts.append(f"Of the single changes tried, `{worst['row']}` ({worst['factor']}: {worst['change']}) made "
                         f"it most vulnerable ({pct(worst['strong_top1'])}, {d_worst:+.1f} points)"
                         + (f", and `{best['row']}` ({best['factor']}: {best['change']}) least "
                            f"({pct(best['strong_top1'])}, {d_best:+.1f} points)." if d_best > 1 else "."))
        else:
            parts.append(f"None of the single changes tried made it more vulnerable than the base by more than a "
                         f"point; `{best['row']}` ({best['factor']}: {best['change']}) made it least "
                         f"({pct(best['strong_top1'])}, {d_best:+.1f} points).")
    parts.append("Each row is one training run (seed 0), so a difference of a point or two may be the seed's, not "
                 "the factor's.")
    close = [r for r in results if r["fixed_top1"] - r["strong_top1"] <= 0.01]
    parts.append(f"In {len(close)} of the {len(results)} rows the best *fixed* stripe or checkerboard, which needs no "
                 "optimisation at all, is within a point of the strong attack"
                 + (": what fools these models is mostly a simple periodic pattern, and how much of it a model "
                    "tolerates depends on how it was trained." if 2 * len(close) >= len(results) else "."))
    return " ".join(parts)

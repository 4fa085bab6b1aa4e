"""Building the zoo: train each model of a dataset with its recipe, ship it with the perturbation the strong attack
makes against it, and record both in the manifest (``store``). Also the study's models and re-attacks."""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path

import torch

from ..engine.checkpoint import load_checkpoint
from ..engine.data import load_dataset
from ..engine.device import pick_device
from ..engine.errors import UATError
from ..engine.evaluation import evaluate
from ..engine.fileio import atomic_write
from ..recipes import protocol, study
from ..recipes.profiles import ALGORITHMS, DATASETS, train_defaults
from ..recipes.runs import DataOptions, TrainRun, cli_flags, run_training
from .cache import cache_path, cached_attack
from .store import (ROOT, ZOO_DIR, list_models, load_zoo_model, load_zoo_perturbation, read_manifest, sha256,
                    slice_metrics, write_manifest, zoo_name)

RUNS = ROOT / "runs" / "zoo"

_GPU40 = dict(epochs=40, batch_size=512, schedule="onecycle", lr=0.4)
_CPU = dict(schedule="onecycle", lr=0.2)          # batch 128
# fine-tuned from the shipped plain models (a CPU cannot train 40 epochs in a session)
_TUNE = dict(schedule="cosine", lr=0.05, report=False)

# zoo model -> its recipe: TrainConfig fields beyond the algorithm's own (``profiles.ALGORITHMS``: uadam is uat
# with the adam δ rule, the pool variants carry 4 δs and a bank share), and the run options of RUN_OPTIONS.
# ε, the architecture and the attack-set size are the dataset's (``profiles.DATASETS``). The digits recipes take
# seconds each on a CPU.
RUN_OPTIONS = ("init_weights", "report", "train_size", "eval_size")
RECIPES: dict[str, dict[str, dict[str, dict]]] = {
    "digits": {
        "models": {
            "natural": dict(epochs=8), "uat": dict(epochs=8), "lowcost": dict(epochs=8),
            "fgsm": dict(fgsm_random_start=True, epochs=8), "pgd": dict(pgd_steps=5, epochs=8),
            "uadam": dict(delta_lr=4, epochs=8), "uat_pool": dict(epochs=8), "lowcost_pool": dict(epochs=8),
        },
    },
    # CIFAR-10: the recipes for one GPU (an H200 trains each in a minute or two; on a 2-core CPU the natural
    # one alone would take about an hour and a half, so a CPU build uses "cpu_models" below). Batch 512 with
    # lr 0.4 is the usual 128 / 0.1 scaled linearly; the per-instance FGSM uses the random start of Wong et
    # al. (2020) so that 40 epochs do not overfit catastrophically.
    "cifar10": {
        "models": {
            "natural": _GPU40, "uat": _GPU40, "lowcost": _GPU40, "fgsm": dict(fgsm_random_start=True, **_GPU40),
            "uadam": dict(delta_lr=1, **_GPU40),
            "pgd": dict(pgd_steps=7, epochs=10, batch_size=512, schedule="onecycle", lr=0.4),
            "uat_pool": _GPU40, "lowcost_pool": _GPU40,
        },
        # Without a GPU: each model in under about 45 minutes on a 2-core CPU (fewer epochs, PGD with K = 2).
        "cpu_models": {
            "natural": dict(epochs=10, **_CPU), "uat": dict(epochs=8, **_CPU), "lowcost": dict(epochs=8, **_CPU),
            "fgsm": dict(fgsm_random_start=True, epochs=4, **_CPU), "uadam": dict(delta_lr=1, epochs=4, **_CPU),
            "pgd": dict(pgd_steps=2, epochs=2, **_CPU),
            "uat_pool": dict(init_weights="cifar10_resnet20_uat", epochs=6, **_TUNE),
            "lowcost_pool": dict(init_weights="cifar10_resnet20_lowcost", epochs=4, **_TUNE),
        },
    },
}


def recipe(dataset: str, algo: str, device: torch.device) -> dict:
    """The recipe of zoo model ``algo`` (TrainConfig fields, the algorithm's included, and run options): the GPU
    recipe on CUDA, the CPU one (where the dataset has one) on the CPU."""
    rec = RECIPES[dataset]
    table = rec["cpu_models"] if device.type != "cuda" and "cpu_models" in rec else rec["models"]
    a = ALGORITHMS[algo]
    return {"algorithm": a.trains_as, **a.overrides, **table[algo]}


def refresh(dataset: str, data_root: str | None = None) -> None:
    """Recompute the slice figures of every manifest entry of ``dataset`` (after a code change)."""
    man = read_manifest()
    for name, e in man["models"].items():
        if e["dataset"] != dataset:
            continue
        model, _ = load_zoo_model(name)
        e.update(slice_metrics(model, dataset, load_zoo_perturbation(name), data_root))
    write_manifest(man)


def train_model(dataset: str, algo: str, data_root: str | None, dev: torch.device, device: str | None = None,
           overrides: dict | None = None) -> tuple[Path, dict]:
    """Train (or resume) ``algo`` with the recipe for ``dev`` (plus ``overrides``), in this process, through
    :func:`~uat_core.recipes.runs.run_training`, as ``uat train`` does; ``device`` is the user's --device.
    Returns (the run folder, its metrics)."""
    prof = DATASETS[dataset]
    fields = {**recipe(dataset, algo, dev), **(overrides or {})}
    run_opts = {k: fields.pop(k) for k in RUN_OPTIONS if k in fields}
    name = zoo_name(dataset, algo)
    out = RUNS / name
    rel = os.path.relpath(out, ROOT)          # the command recorded in the model's metadata names no machine path
    argv = ["--dataset", dataset, "--model", prof.arch, "--eps", str(prof.eps), "--out", rel,
            "--report-attack-size", str(prof.attack_size), "--seed", "0", *cli_flags({**fields, **run_opts})]
    if data_root:
        argv += ["--data-root", data_root]
    if device not in (None, "", "auto"):
        argv += ["--device", device]
    if (out / "model.pt").is_file() and (out / "metrics.json").is_file():     # finished before the zoo took it
        return out, json.loads((out / "metrics.json").read_text())
    init = run_opts.get("init_weights")
    run = TrainRun(DataOptions(dataset, data_root), prof.arch, train_defaults(dataset, eps=prof.eps, seed=0, **fields),
                   out, device or "auto", force=out.exists() and not (out / "checkpoint.pt").is_file(),
                   resume=(out / "checkpoint.pt").is_file(), train_size=run_opts.get("train_size"),
                   eval_size=run_opts.get("eval_size"),
                   init_weights=ZOO_DIR / read_manifest()["models"][init]["file"] if init else None, init_source=init,
                   report=run_opts.get("report", True), report_attack_size=prof.attack_size,
                   command="python -m uat_core train " + " ".join(argv))
    print("$", run.command, flush=True)
    outcome = run_training(run)
    if outcome.metrics is None:
        raise UATError(f"training in {rel} stopped before its end; run the build again to resume it")
    return out, outcome.metrics


def build(dataset: str, only: list[str] | None = None, data_root: str | None = None,
          device: str | None = None) -> None:
    """Train (or resume) each missing zoo model of ``dataset`` and ship it with its perturbation.

    ``device``: auto (CUDA when present) | cpu | cuda[:N], for the training run and the shipped attack."""

    rec = RECIPES[dataset]
    algos = only or list(rec["models"])
    for algo in algos:
        if algo not in rec["models"]:
            raise UATError(f"unknown zoo model '{algo}' for {dataset}: choose {', '.join(rec['models'])}")
    dev = pick_device(device)
    for algo in algos:
        name = zoo_name(dataset, algo)
        man = read_manifest()
        if name in man["models"] and (ZOO_DIR / man["models"][name]["file"]).is_file():
            print(f"{name}: already in the zoo", flush=True)
            continue
        out, metrics = train_model(dataset, algo, data_root, dev, device)
        ZOO_DIR.mkdir(parents=True, exist_ok=True)
        dst = ZOO_DIR / f"{name}.pt"
        shutil.copyfile(out / "model.pt", dst)
        _, meta = load_checkpoint(dst, device=dev)
        man = read_manifest()
        man["models"][name] = {
            "file": dst.name, "sha256": sha256(dst), "arch": meta["arch"], "dataset": dataset,
            "algorithm": algo, "trained_with": meta["training"].get("algorithm", algo),
            "delta_rule": meta["training"].get("delta_rule"), "eps": DATASETS[dataset].eps,
            "delta_pool": meta["training"].get("delta_pool", 1),
            "reseed_every": meta["training"].get("reseed_every", 0),
            "bank_share": meta["training"].get("bank_share", 0.0),
            "fine_tuned_from": meta["training"].get("init_weights"),
            "epochs": metrics["epochs"], "train_size": metrics["train_size"],
            "clean_top1": metrics["clean_top1"], "robust_top1": metrics.get("robust_top1"),
            "train_seconds": round(metrics["seconds"], 1), "passes": metrics.get("passes"),
            "command": (meta["training"].get("command") or "").replace(str(ROOT) + os.sep, ""),
            "recipe": " ".join(cli_flags(recipe(dataset, algo, dev))),       # what differs between the zoo's models
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "built": _dt.date.today().isoformat(),
        }
        write_manifest(man)
        ev = ship_perturbation(name, data_root, dev)
        print(f"{name}: clean {100 * ev['clean_top1']:.1f}%, with its δ (strong attack) "
              f"{100 * ev['perturbed_top1']:.1f}%, best fixed pattern {100 * ev['fixed_top1']:.1f}%", flush=True)


def add_study_model(row: str, data_root: str | None = None, device: str | None = None) -> str:
    """Ship the trained model of vulnerability-study row ``row`` (``runs/study/<row>``, see
    ``bench/vulnerability_study.py``) beside the zoo as ``cifar10_<arch>_study_<row>`` (group "study"), with
    its perturbation made by the strong attack as for every zoo model. Returns its name."""
    if row not in study.ROWS:
        raise UATError(f"unknown study row '{row}': choose {', '.join(study.ROWS)}")
    run = study.RUNS / row
    if not (run / "model.pt").is_file() or not (run / "metrics.json").is_file():
        raise UATError(f"study row '{row}' is not trained yet: run python bench/vulnerability_study.py --rows {row}")
    dev = pick_device(device)
    metrics = json.loads((run / "metrics.json").read_text())
    _, meta = load_checkpoint(run / "model.pt")
    name = f"cifar10_{meta['arch']}_study_{row}"
    ZOO_DIR.mkdir(parents=True, exist_ok=True)
    dst = ZOO_DIR / f"{name}.pt"
    shutil.copyfile(run / "model.pt", dst)
    man = read_manifest()
    man["models"][name] = {
        "file": dst.name, "sha256": sha256(dst), "arch": meta["arch"], "dataset": "cifar10", "group": "study",
        "algorithm": "natural", "study_row": row,
        "study_factor": study.ROWS[row][0], "study_change": study.ROWS[row][1],
        "trained_with": "natural", "eps": DATASETS["cifar10"].eps,
        "label_smoothing": meta["training"].get("label_smoothing", 0.0),
        "epochs": metrics["epochs"], "train_size": metrics["train_size"], "clean_top1": metrics["clean_top1"],
        "train_seconds": round(metrics["seconds"], 1), "passes": metrics.get("passes"),
        "command": study.command(row),      # the study's command, whatever folder the run was made in
        "recipe": f"{study.ROWS[row][0]}: {study.ROWS[row][1]}",
        "device": "cpu", "built": _dt.date.today().isoformat(),
    }
    write_manifest(man)
    ev = ship_perturbation(name, data_root, dev)
    print(f"{name}: clean {100 * ev['clean_top1']:.1f}%, with its δ (strong attack) "
          f"{100 * ev['perturbed_top1']:.1f}%, best fixed pattern {100 * ev['fixed_top1']:.1f}%", flush=True)
    return name


def ship_perturbation(name: str, data_root: str | None = None, dev=None, cache: Path | None = None) -> dict:
    """Build the shipped universal perturbation of zoo model ``name`` with the strong attack (ε as trained,
    β = 9, 10 epochs, the recipe's attack images), evaluate it and the best fixed pattern on the whole test
    split, and record both in the manifest (its ``robust_top1`` becomes the strong attack's figure).

    ``cache``: the report's perturbation cache (same model sha256, ε, attack size, epochs: the same δ)."""
    man = read_manifest()
    e = man["models"][name]
    model, _ = load_zoo_model(name, device=dev or "cpu")
    train = load_dataset(e["dataset"], "train", data_root, limit=DATASETS[e["dataset"]].attack_size, seed=0,
                         progress=False)
    test = load_dataset(e["dataset"], "test", data_root, progress=False)
    cfile = cache_path(cache, e["sha256"], "strong", e["eps"], len(train), protocol.EPOCHS) if cache else None
    got = cached_attack(model, train, "strong", e["eps"], protocol.EPOCHS, cfile)
    pfile = ZOO_DIR / f"{name}.delta.pt"
    atomic_write(pfile, lambda tmp: torch.save(got["delta"].clone(), tmp))
    ev = evaluate(model, test.images, test.labels, got["delta"], test.num_classes)
    fx = evaluate(model, test.images, test.labels, got["fixed"], test.num_classes)
    e.update({
        "perturbation": pfile.name, "perturbation_sha256": sha256(pfile),
        "perturbed_top1": ev["perturbed_top1"], "perturbation_clean_top1": ev["clean_top1"],
        "robust_top1": ev["perturbed_top1"], "robust_attack": "strong",
        "fixed_top1": fx["perturbed_top1"], "fixed_pattern": got["fixed_name"],
        "perturbation_attack": protocol.record("strong", e["eps"], len(train), start=got["start"]),
        **slice_metrics(model, e["dataset"], got["delta"], data_root),
    })
    write_manifest(man)
    return {"clean_top1": ev["clean_top1"], "perturbed_top1": ev["perturbed_top1"], "fixed_top1": fx["perturbed_top1"]}


def reattack(dataset: str, data_root: str | None = None, device: str | None = None, cache: Path | None = None) -> None:
    """Rebuild every shipped perturbation of ``dataset`` with the strong attack (see ``ship_perturbation``)."""
    dev = pick_device(device)
    for e in list_models(dataset):
        ev = ship_perturbation(e["name"], data_root, dev, cache)
        print(f"{e['name']}: clean {100 * ev['clean_top1']:.1f}%, strong {100 * ev['perturbed_top1']:.1f}%, "
              f"best fixed pattern {100 * ev['fixed_top1']:.1f}%", flush=True)

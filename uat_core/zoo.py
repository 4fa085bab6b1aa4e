"""The model zoo: trained models and their universal perturbations shipped in ``assets/models``.

    python -m uat_core.zoo build --dataset digits            # seconds per model
    python -m uat_core.zoo build --dataset cifar10 --only natural,lowcost   # GPU: minutes; CPU: ~15-45 min each
    python -m uat_core.zoo report --dataset cifar10          # writes docs/results.md
    python -m uat_core.zoo list

Each build trains through the CLI into ``runs/zoo/<name>`` (checkpoint every epoch, so an interrupted
build resumes where it stopped), copies the weights to ``assets/models/<name>.pt``, builds the default
universal perturbation against it with the strong attack (``attacks/strong.py``; β = 9, 10 epochs) as
``<name>.delta.pt``, measures the best fixed bank pattern beside it and records everything in
``assets/models/manifest.json``. ``reattack`` rebuilds the shipped perturbations of existing models. The
app and the notebooks load models by name from here.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from . import study
from .errors import UATError

ROOT = Path(__file__).resolve().parents[1]
ZOO_DIR = ROOT / "assets" / "models"
MANIFEST = ZOO_DIR / "manifest.json"
RUNS = ROOT / "runs" / "zoo"

_GPU40 = ["--epochs", "40", "--batch-size", "512", "--schedule", "onecycle", "--lr", "0.4"]
_CPU = ["--schedule", "onecycle", "--lr", "0.2"]          # batch 128

# name -> training recipe (the arguments after the common ones in _train). ε in 0-255 units. The digits
# recipes take seconds each on a CPU.
RECIPES = {
    "digits": {
        "eps": 32, "model": "smallcnn", "attack_size": 1297,
        "models": {
            "natural": ["--algorithm", "natural", "--epochs", "8"],
            "uat": ["--algorithm", "uat", "--epochs", "8"],
            "lowcost": ["--algorithm", "lowcost", "--epochs", "8"],
            "fgsm": ["--algorithm", "fgsm", "--fgsm-random-start", "--epochs", "8"],
            "pgd": ["--algorithm", "pgd", "--pgd-steps", "5", "--epochs", "8"],
            "uadam": ["--algorithm", "uat", "--delta-rule", "adam", "--delta-lr", "4", "--epochs", "8"],
            # the paper's Alg. 3 / 4 with a pool of 4 universal δs in the same passes (training.py)
            "uat_pool": ["--algorithm", "uat", "--delta-pool", "4", "--bank-share", "0.25", "--epochs", "8"],
            "lowcost_pool": ["--algorithm", "lowcost", "--delta-pool", "4", "--bank-share", "0.25", "--epochs", "8"],
        },
    },
    # CIFAR-10: the recipes for one GPU (an H200 trains each in a minute or two; on a 2-core CPU the natural
    # one alone would take about an hour and a half, so a CPU build uses "cpu_models" below). Batch 512 with
    # lr 0.4 is the usual 128 / 0.1 scaled linearly; the per-instance FGSM uses the random start of Wong et
    # al. (2020) so that 40 epochs do not overfit catastrophically.
    "cifar10": {
        "eps": 8, "model": "resnet20", "attack_size": 2000,
        "models": {
            "natural": ["--algorithm", "natural", *_GPU40],
            "uat": ["--algorithm", "uat", *_GPU40],
            "lowcost": ["--algorithm", "lowcost", *_GPU40],
            "fgsm": ["--algorithm", "fgsm", "--fgsm-random-start", *_GPU40],
            "uadam": ["--algorithm", "uat", "--delta-rule", "adam", "--delta-lr", "1", *_GPU40],
            "pgd": ["--algorithm", "pgd", "--pgd-steps", "7", "--epochs", "10", "--batch-size", "512",
                    "--schedule", "onecycle", "--lr", "0.4"],
            "uat_pool": ["--algorithm", "uat", "--delta-pool", "4", "--bank-share", "0.25", *_GPU40],
            "lowcost_pool": ["--algorithm", "lowcost", "--delta-pool", "4", "--bank-share", "0.25", *_GPU40],
        },
        # Without a GPU: each model in under about 45 minutes on a 2-core CPU (fewer epochs, PGD with K = 2).
        "cpu_models": {
            "natural": ["--algorithm", "natural", "--epochs", "10", *_CPU],
            "uat": ["--algorithm", "uat", "--epochs", "8", *_CPU],
            "lowcost": ["--algorithm", "lowcost", "--epochs", "8", *_CPU],
            "fgsm": ["--algorithm", "fgsm", "--fgsm-random-start", "--epochs", "4", *_CPU],
            "uadam": ["--algorithm", "uat", "--delta-rule", "adam", "--delta-lr", "1", "--epochs", "4", *_CPU],
            "pgd": ["--algorithm", "pgd", "--pgd-steps", "2", "--epochs", "2", *_CPU],
            # fine-tuned from the shipped plain models (a CPU cannot train 40 epochs in a session)
            "uat_pool": ["--algorithm", "uat", "--delta-pool", "4", "--bank-share", "0.25", "--init-weights",
                         "cifar10_resnet20_uat",
                         "--epochs", "6", "--schedule", "cosine", "--lr", "0.05", "--no-report"],
            "lowcost_pool": ["--algorithm", "lowcost", "--delta-pool", "4", "--bank-share", "0.25", "--init-weights",
                             "cifar10_resnet20_lowcost", "--epochs", "4", "--schedule", "cosine", "--lr", "0.05",
                             "--no-report"],
        },
    },
}


def recipe(dataset: str, algo: str, device: torch.device) -> list[str]:
    """The training arguments of zoo model ``algo``: the GPU recipe on CUDA, the CPU one (where the dataset
    has one) on the CPU."""
    rec = RECIPES[dataset]
    table = rec["cpu_models"] if device.type != "cuda" and "cpu_models" in rec else rec["models"]
    return table[algo]


def trained_on(device: str | None) -> str:
    """Where a zoo model was trained, for people: "CPU" or the GPU's name (the manifest's ``device``)."""
    return "CPU" if device in (None, "", "cpu") else device


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest() -> dict:
    if MANIFEST.is_file():
        return json.loads(MANIFEST.read_text())
    return {"models": {}}


def write_manifest(man: dict) -> None:
    from .fileio import write_json
    write_json(MANIFEST, man)


def zoo_name(dataset: str, algorithm: str) -> str:
    return f"{dataset}_{RECIPES[dataset]['model']}_{algorithm}"


GROUPS = ("zoo", "study")   # zoo: one model per algorithm (Table 1); study: the vulnerability study's models


def list_models(dataset: str | None = None, group: str | None = "zoo") -> list[dict]:
    """Manifest entries (with ``name``), optionally for one dataset. ``group``: "zoo" (the default: the models
    of Table 1, one per algorithm), "study" (natural models of the vulnerability study, ``uat_core.study``)
    or None (all)."""
    man = read_manifest()
    return [{"name": k, **v} for k, v in man["models"].items() if (dataset is None or v["dataset"] == dataset)
            and (group is None or v.get("group", "zoo") == group)]


def load_zoo_model(name: str, device="cpu"):
    """(model, meta) of a shipped model, after checking its sha256 against the manifest."""
    from .checkpoint import load_checkpoint
    man = read_manifest()["models"]
    if name not in man:
        raise UATError(f"no zoo model '{name}': choose one of {', '.join(sorted(man)) or '(none built yet)'}")
    path = ZOO_DIR / man[name]["file"]
    if sha256(path) != man[name]["sha256"]:
        raise UATError(f"{path} does not match its sha256 in the manifest")
    return load_checkpoint(path, device=device)


def load_zoo_perturbation(name: str) -> torch.Tensor:
    from .export import load_perturbation
    man = read_manifest()["models"]
    if name not in man or not man[name].get("perturbation"):
        raise UATError(f"no shipped perturbation for '{name}'")
    return load_perturbation(ZOO_DIR / man[name]["perturbation"])


SLICE = 1000   # the fixed, stratified test slice (seed 0) the tests check the manifest against


def slice_metrics(model, dataset: str, delta: torch.Tensor, data_root: str | None = None) -> dict:
    """Clean and perturbed top-1 on the fixed test slice (all 500 test images for digits)."""
    from .data import load_dataset
    from .evaluation import evaluate
    test = load_dataset(dataset, "test", data_root, limit=SLICE, seed=0, progress=False)
    m = evaluate(model, test.images, test.labels, delta, test.num_classes)
    return {"slice_size": len(test), "slice_clean_top1": m["clean_top1"], "slice_perturbed_top1": m["perturbed_top1"]}


def refresh(dataset: str, data_root: str | None = None) -> None:
    """Recompute the slice figures of every manifest entry of ``dataset`` (after a code change)."""
    man = read_manifest()
    for name, e in man["models"].items():
        if e["dataset"] != dataset:
            continue
        model, _ = load_zoo_model(name)
        e.update(slice_metrics(model, dataset, load_zoo_perturbation(name), data_root))
    write_manifest(man)


def _train(dataset: str, algo: str, data_root: str | None, extra: list[str], dev: torch.device,
           device: str | None = None) -> tuple[Path, dict]:
    """Train (or resume) ``algo`` with the recipe for ``dev``, in this process, through the same function as
    ``uat train`` (:func:`uat_core.cli.train`); ``device`` is the user's --device, passed on only when given.
    Returns (the run folder, its metrics)."""
    from .cli import train
    rec = RECIPES[dataset]
    name = zoo_name(dataset, algo)
    out = RUNS / name
    rel = os.path.relpath(out, ROOT)          # the command recorded in the model's metadata names no machine path
    argv = ["--dataset", dataset, "--model", rec["model"], "--eps", str(rec["eps"]), "--out", rel,
            "--report-attack-size", str(rec["attack_size"]), "--seed", "0", *recipe(dataset, algo, dev), *extra]
    if data_root:
        argv += ["--data-root", data_root]
    if device not in (None, "", "auto"):
        argv += ["--device", device]
    if (out / "model.pt").is_file() and (out / "metrics.json").is_file():     # finished before the zoo took it
        return out, json.loads((out / "metrics.json").read_text())
    if (out / "checkpoint.pt").is_file():
        argv.append("--resume")
    elif out.exists():
        argv.append("--force")
    print("$ python -m uat_core train", " ".join(argv), flush=True)
    with contextlib.chdir(ROOT):              # paths in the recipe are relative to the project, as in the docs
        return out, train(argv)


def build(dataset: str, only: list[str] | None = None, data_root: str | None = None, extra=(),
          device: str | None = None) -> None:
    """Train (or resume) each missing zoo model of ``dataset`` and ship it with its perturbation.

    ``device``: auto (CUDA when present) | cpu | cuda[:N], for the training run and the shipped attack."""
    from .checkpoint import load_checkpoint
    from .device import pick_device

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
        out, metrics = _train(dataset, algo, data_root, list(extra), dev, device)
        ZOO_DIR.mkdir(parents=True, exist_ok=True)
        dst = ZOO_DIR / f"{name}.pt"
        shutil.copyfile(out / "model.pt", dst)
        _, meta = load_checkpoint(dst, device=dev)
        man = read_manifest()
        man["models"][name] = {
            "file": dst.name, "sha256": sha256(dst), "arch": meta["arch"], "dataset": dataset,
            "algorithm": algo, "trained_with": meta["training"].get("algorithm", algo),
            "delta_rule": meta["training"].get("delta_rule"), "eps": rec["eps"],
            "delta_pool": meta["training"].get("delta_pool", 1),
            "reseed_every": meta["training"].get("reseed_every", 0),
            "bank_share": meta["training"].get("bank_share", 0.0),
            "fine_tuned_from": meta["training"].get("init_weights"),
            "epochs": metrics["epochs"], "train_size": metrics["train_size"],
            "clean_top1": metrics["clean_top1"], "robust_top1": metrics.get("robust_top1"),
            "train_seconds": round(metrics["seconds"], 1), "passes": metrics.get("passes"),
            "command": (meta["training"].get("command") or "").replace(str(ROOT) + os.sep, ""),
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
    from .checkpoint import load_checkpoint
    from .device import pick_device
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
        "trained_with": "natural", "eps": RECIPES["cifar10"]["eps"],
        "label_smoothing": meta["training"].get("label_smoothing", 0.0),
        "epochs": metrics["epochs"], "train_size": metrics["train_size"], "clean_top1": metrics["clean_top1"],
        "train_seconds": round(metrics["seconds"], 1), "passes": metrics.get("passes"),
        "command": study.command(row),      # the study's command, whatever folder the run was made in
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
    from .data import load_dataset
    from .evaluation import evaluate
    from .fileio import atomic_write
    from . import protocol
    from .report import _attack, _cache_path
    man = read_manifest()
    e = man["models"][name]
    rec = RECIPES[e["dataset"]]
    model, _ = load_zoo_model(name, device=dev or "cpu")
    train = load_dataset(e["dataset"], "train", data_root, limit=rec["attack_size"], seed=0, progress=False)
    test = load_dataset(e["dataset"], "test", data_root, progress=False)
    cfile = _cache_path(cache, e["sha256"], "strong", e["eps"], len(train), protocol.EPOCHS) if cache else None
    got = _attack(model, train, "strong", e["eps"], protocol.EPOCHS, cfile)
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
    from .device import pick_device
    dev = pick_device(device)
    for e in list_models(dataset):
        ev = ship_perturbation(e["name"], data_root, dev, cache)
        print(f"{e['name']}: clean {100 * ev['clean_top1']:.1f}%, strong {100 * ev['perturbed_top1']:.1f}%, "
              f"best fixed pattern {100 * ev['fixed_top1']:.1f}%", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uat_core.zoo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train and ship the zoo models of a dataset (resumes)")
    b.add_argument("--dataset", default="digits", help="digits | cifar10")
    b.add_argument("--only", default=None, help="comma-separated subset, e.g. natural,lowcost")
    b.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    b.add_argument("--device", default="auto",
                   help="auto (CUDA if present, else CPU) | cpu | cuda | cuda:N; a CPU build of cifar10 uses the "
                        "shorter CPU recipes (RECIPES[...]['cpu_models'])")
    r = sub.add_parser("report", help="attack every zoo model (Alg. 2, best fixed pattern, strong attack, per-instance "
                                      "PGD), build the transfer matrix, write docs/results.md")
    r.add_argument("--dataset", default="cifar10", help="digits | cifar10")
    r.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    r.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU) | cpu | cuda | cuda:N")
    r.add_argument("--attack-size", type=int, default=None,
                   help="training images per attack (default 2000; digits all)")
    r.add_argument("--attack-epochs", type=int, default=10,
                   help="passes of Alg. 2 over the attack images, for plain Alg. 2 and for the strong attack's winner "
                        "(default 10)")
    r.add_argument("--pgd-size", type=int, default=500,
                   help="test images of the per-instance PGD column (an upper bound on any universal attack; 0 = none)")
    r.add_argument("--out", default=str(ROOT / "docs" / "results.md"),
                   help="the Markdown file to write (a .json twin is written beside it; both are replaced)")
    r.add_argument("--only", default=None, help="comma-separated zoo models (by training algorithm) to report on, "
                                                "e.g. natural,uat,lowcost (default: all)")
    r.add_argument("--render-only", action="store_true",
                   help="write --out again from its .json twin without attacking anything (after new study rows "
                        "or a change to the report's text)")
    r.add_argument("--no-cache", action="store_true",
                   help="attack every model again instead of reusing perturbations saved in runs/report_cache "
                        "by an earlier report (they are keyed by model sha256, ε, attack size and epochs)")
    h = sub.add_parser("heldout", help="the held-out protocol: δ built and picked on one half of the test split, "
                                       "scored on the other, added to docs/results.md (+ .json)")
    h.add_argument("--dataset", default="cifar10", help="digits | cifar10")
    h.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    h.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU) | cpu | cuda | cuda:N")
    h.add_argument("--out", default=str(ROOT / "docs" / "results.md"),
                   help="the report to add the figures to (its .json twin is read and written again)")
    h.add_argument("--only", default=None, help="comma-separated zoo models (by training algorithm), e.g. natural "
                                                "(default: every model in the report)")
    f = sub.add_parser("refresh", help="recompute the fixed-slice figures of the manifest")
    f.add_argument("--dataset", default="digits", help="digits | cifar10")
    f.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    ra = sub.add_parser("reattack", help="rebuild every shipped perturbation with the strong attack (reuses the "
                                         "report's cached perturbations) and record it in the manifest")
    ra.add_argument("--dataset", default="digits", help="digits | cifar10")
    ra.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    ra.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU) | cpu | cuda | cuda:N")
    st = sub.add_parser("add-study", help="ship a trained model of the vulnerability study "
                                          "(bench/vulnerability_study.py) beside the zoo, with its strong-attack δ")
    st.add_argument("--row", required=True,
                    help="the study row, e.g. ls01 (python bench/vulnerability_study.py --list)")
    st.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    st.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU) | cpu | cuda | cuda:N")
    sub.add_parser("list", help="print the manifest")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            if args.dataset not in RECIPES:
                raise UATError(f"unknown zoo dataset '{args.dataset}': choose digits or cifar10")
            build(args.dataset, args.only.split(",") if args.only else None, args.data_root, device=args.device)
        elif args.cmd == "report" and args.render_only:
            from .report import rerender
            rerender(Path(args.out))
        elif args.cmd == "report":
            from .report import write_report
            write_report(args.dataset, args.data_root, args.attack_size, Path(args.out), args.attack_epochs,
                         None if args.no_cache else ROOT / "runs" / "report_cache", device=args.device,
                         pgd_size=args.pgd_size, only=args.only.split(",") if args.only else None)
        elif args.cmd == "heldout":
            from .report import add_heldout
            add_heldout(args.dataset, args.data_root, Path(args.out), args.only.split(",") if args.only else None,
                        args.device)
        elif args.cmd == "refresh":
            refresh(args.dataset, args.data_root)
        elif args.cmd == "add-study":
            add_study_model(args.row, args.data_root, args.device)
        elif args.cmd == "reattack":
            reattack(args.dataset, args.data_root, args.device, ROOT / "runs" / "report_cache")
        else:
            for m in list_models(group=None):
                print(f"{m['name']:40s} clean {100 * m['clean_top1']:5.1f}%  robust "
                      f"{100 * (m.get('robust_top1') or 0):5.1f}%  {m['train_seconds']:7.1f} s")
    except UATError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

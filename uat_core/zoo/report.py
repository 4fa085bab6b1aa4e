"""``python -m uat_core.zoo report``: attack every zoo model, build the transfer matrix, write docs/results.md.

Nothing in the report is typed by hand: every figure comes from the manifest or from the attacks run
here, and the command and date are written into the file.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ..recipes import protocol, study    # study's names are looked up when used (tests replace load_results)
from ..recipes.pipeline import heldout_report
from ..recipes.profiles import ALGORITHMS, DATASETS
from ..engine.attacks.pgd import pgd_accuracy
from ..engine.data import load_dataset
from ..engine.device import pick_device
from ..engine.errors import UATError
from ..engine.evaluation import predict
from ..engine.fileio import atomic_bytes, write_json
from .cache import cache_path, cached_attack
from .store import list_models, load_zoo_model, load_zoo_perturbation, read_manifest, trained_on, write_manifest

# The paper's Table 1 (CIFAR-10, WRN 32-10, ε = 8; accuracy under a universal perturbation made by its
# SGD attack). Only the rows the paper's abstract and text state are reproduced here.
PAPER = {"natural": (95.2, 9.2), "uat": (93.5, 91.8), "lowcost": (93.5, 86.1)}
LABELS = {a: v.label for a, v in ALGORITHMS.items()}          # the project's one table (recipes/profiles.py)


PGD_SLICE, PGD_STEPS = 500, 10        # per-instance PGD (the upper bound of any universal attack): test slice, K

# The pre-strong-attack reference on a natural ResNet-20 of similar clean accuracy (84.8%): accuracy left at
# ε = 8 / 12 / 16 by the plain Alg. 2 of an earlier version of this project.
REFERENCE_NATURAL = {8: 0.45, 12: 0.32, 16: 0.20}
STRONG_TARGET_NATURAL = 0.55          # the strong attack must leave at most this on the natural model at ε


def write_report(dataset: str, data_root: str | None, attack_size: int | None, out: Path,
                 attack_epochs: int = protocol.EPOCHS, cache: Path | None = None, device: str | None = None,
                 pgd_size: int = PGD_SLICE, only: list[str] | None = None) -> dict:
    """Attack every zoo model of ``dataset`` at ε, 1.5ε and 2ε with plain Alg. 2 (from δ = 0) and with the
    strong attack, beside the best fixed bank pattern and per-instance PGD (on ``pgd_size`` test images);
    evaluate on the whole test split, build the transfer matrix of the strong δs at ε and write ``out``
    (Markdown) and its JSON twin. ``only``: these zoo models (by training algorithm) instead of all.

    Perturbations are cached in ``cache`` by model sha256, attack, ε and attack size, so an interrupted report
    (or one rerun after adding a model) only attacks what is new."""
    dev = pick_device(device)
    entries = list_models(dataset)
    if only:
        unknown = [a for a in only if a not in {e["algorithm"] for e in entries}]
        if unknown:
            raise UATError(f"no {dataset} zoo model '{unknown[0]}': choose from "
                           f"{', '.join(e['algorithm'] for e in entries)}")
        entries = [e for e in entries if e["algorithm"] in only]
    if not entries:
        raise UATError(f"no {dataset} models in the zoo yet: run python -m uat_core.zoo build --dataset {dataset}")
    if attack_size is not None and attack_size < 1:
        raise UATError(f"--attack-size must be at least 1 (got {attack_size})")
    if attack_epochs < 1:
        raise UATError(f"--attack-epochs must be at least 1 (got {attack_epochs})")
    if pgd_size < 0:
        raise UATError(f"--pgd-size must be ≥ 0 (0 = no per-instance PGD), got {pgd_size}")
    t0 = time.perf_counter()
    base_eps = entries[0]["eps"]
    eps_list = [base_eps, 3 * base_eps // 2, 2 * base_eps]
    attack_size = attack_size or DATASETS[dataset].attack_size
    train = load_dataset(dataset, "train", data_root, limit=attack_size, seed=0, progress=False)
    test = load_dataset(dataset, "test", data_root, progress=False)
    pgd_set = test.subset(pgd_size, 0) if pgd_size else None
    models, deltas, rows = {}, {}, []
    attacks = reused = 0
    for e in entries:
        model, _ = load_zoo_model(e["name"], device=dev)
        models[e["algorithm"]] = model
        row = {"name": e["name"], "algorithm": e["algorithm"], "epochs": e["epochs"],
               "train_seconds": e["train_seconds"], "trained_eps": e["eps"], "recipe": e.get("recipe", ""),
               "trained_on": e.get("device", "cpu"), "fine_tuned_from": e.get("fine_tuned_from")}
        row["clean_top1"] = _perturbed_top1(model, test, None)
        for eps in eps_list:
            got = {}
            for attack in ("alg2", "strong"):
                print(f"attacking {e['name']} at ε = {eps} ({attack}) ...", file=sys.stderr, flush=True)
                cfile = cache_path(cache, e["sha256"], attack, eps, len(train), attack_epochs) if cache else None
                attacks += 1
                reused += bool(cfile is not None and cfile.is_file())
                got[attack] = cached_attack(model, train, attack, eps, attack_epochs, cfile)
            st = got["strong"]
            row[f"alg2_top1@{eps}"] = _perturbed_top1(model, test, got["alg2"]["delta"])
            row[f"robust_top1@{eps}"] = _perturbed_top1(model, test, st["delta"])     # the strong attack
            row[f"fixed_top1@{eps}"] = _perturbed_top1(model, test, st["fixed"])
            row[f"fixed_pattern@{eps}"] = st["fixed_name"]
            row[f"start@{eps}"] = st["start"]
            row[f"pgd_top1@{eps}"] = pgd_accuracy(model, pgd_set.images, pgd_set.labels, eps, PGD_STEPS) \
                if pgd_set is not None else None
            if eps == base_eps:
                deltas[e["algorithm"]] = st["delta"]
        rows.append(row)
    names = list(models)
    matrix = [[_perturbed_top1(models[b], test, deltas[a]) for b in names] for a in names]
    seconds = time.perf_counter() - t0
    cmd = f"python -m uat_core.zoo report --dataset {dataset} --attack-size {attack_size}"
    if attack_epochs != protocol.EPOCHS:
        cmd += f" --attack-epochs {attack_epochs}"
    if pgd_size != PGD_SLICE:
        cmd += f" --pgd-size {pgd_size}"
    if only:
        cmd += f" --only {','.join(only)}"
    data = {"dataset": dataset, "rows": rows, "transfer": {"sources": names, "targets": names, "matrix": matrix},
            "eps": eps_list, "attack_size": len(train), "attack_epochs": attack_epochs, "test_size": len(test),
            "pgd_size": len(pgd_set) if pgd_set is not None else 0, "pgd_steps": PGD_STEPS,
            "seconds": seconds, "command": cmd, "attacks": attacks, "reused": reused,
            "date": _dt.date.today().isoformat(), "torch": torch.__version__,
            "machine": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")}
    data["targets"] = targets(data) if dataset == "cifar10" else []
    write_json(out.with_suffix(".json"), data)
    atomic_bytes(out, render(data, _study_rows(dataset)).encode())
    return data


def add_heldout(dataset: str, data_root: str | None, out: Path, only: list[str] | None = None,
                device: str | None = None) -> dict:
    """Measure the held-out protocol (``pipeline.heldout_report``: the strong attack built on one half of the
    test split and scored on the other, beside the shipped δ on that half) for the zoo models already in the
    report ``out`` (its JSON twin), add the figures to its rows and write both files again. ``only``: these
    models (by training algorithm). The other figures are kept as they are."""
    src = out.with_suffix(".json")
    if not src.is_file():
        raise UATError(f"no report at {src}: run python -m uat_core.zoo report --dataset {dataset} first")
    data = json.loads(src.read_text())
    entries = {e["algorithm"]: e for e in list_models(dataset)}
    rows = [r for r in data["rows"] if only is None or r["algorithm"] in only]
    unknown = [a for a in (only or []) if a not in {r["algorithm"] for r in data["rows"]}]
    if unknown:
        raise UATError(f"no {dataset} model '{unknown[0]}' in {src.name}: choose from "
                       f"{', '.join(r['algorithm'] for r in data['rows'])}")
    dev = pick_device(device)
    test = load_dataset(dataset, "test", data_root, progress=False)
    eps = data["eps"][0]
    for r in rows:
        e = entries[r["algorithm"]]
        print(f"held-out protocol: {e['name']} at ε = {eps} ...", file=sys.stderr, flush=True)
        model, _ = load_zoo_model(e["name"], device=dev)
        h = heldout_report(model, test, eps, data["attack_size"], load_zoo_perturbation(e["name"]),
                           data.get("attack_epochs", protocol.EPOCHS), device=dev)
        h.pop("delta")
        r.update({f"{k}@{eps}": v for k, v in h.items()}, **{f"heldout_sha256@{eps}": e["sha256"]})
    data["heldout_command"] = f"python -m uat_core.zoo heldout --dataset {dataset}" + \
        (f" --only {','.join(only)}" if only else "")
    data["targets"] = targets(data) if dataset == "cifar10" else []
    write_json(src, data)
    atomic_bytes(out, render(data, _study_rows(dataset)).encode())
    record_heldout(data)
    return data


HELDOUT_KEYS = ("heldout_clean_top1", "train_strong_on_heldout_top1", "heldout_strong_top1", "heldout_fixed_top1",
                "heldout_fixed_pattern", "heldout_robust_top1", "heldout_attack_size", "heldout_score_size")


def record_heldout(data: dict) -> int:
    """Copy a report's held-out figures (at its first ε) into the manifest entries of the same models, matched by
    name (and sha256, where the report recorded it: a model rebuilt since keeps none), so the app and the notebooks
    show the figures the report shows. Returns how many entries were written."""
    eps = data["eps"][0]
    man = read_manifest()
    n = 0
    for r in data["rows"]:
        e = man["models"].get(r["name"])
        if e is None or r.get(f"heldout_robust_top1@{eps}") is None \
                or r.get(f"heldout_sha256@{eps}", e["sha256"]) != e["sha256"]:
            continue
        e["heldout"] = {"eps": eps, **{k: r[f"{k}@{eps}"] for k in HELDOUT_KEYS if f"{k}@{eps}" in r}}
        n += 1
    if n:
        write_manifest(man)
    return n


def _study_rows(dataset: str) -> list[dict] | None:
    """The vulnerability study's rows for the CIFAR-10 report (None for other datasets)."""
    if dataset != "cifar10":
        return None
    return study.load_results() or None


def rerender(out: Path) -> dict:
    """Write ``out`` again from its JSON twin, with no attack (after a change to the text or new study rows)."""
    src = out.with_suffix(".json")
    if not src.is_file():
        raise UATError(f"no report at {src}: run python -m uat_core.zoo report first")
    data = json.loads(src.read_text())
    if data["dataset"] == "cifar10":
        data["targets"] = targets(data)          # the targets' wording and thresholds as the code has them now
        write_json(src, data)
    atomic_bytes(out, render(data, _study_rows(data["dataset"])).encode())
    return data


def check(name: str, value, ok: bool | None) -> dict:
    """One target of the report: its wording, what was measured and whether it is met (None: not judged)."""
    return {"target": name, "measured": value, "met": ok}


def targets(d: dict) -> list[dict]:
    """The report's targets (robustness, ordering, the strong attack, the pool models), each with what the
    report measured and whether it is met (None: model missing)."""
    rows = {r["algorithm"]: r for r in d["rows"]}
    e0, e1, e2 = d["eps"]

    def get(algo, key):
        r = rows.get(algo)
        return None if r is None else r.get(key)

    out = []
    nc = get("natural", "clean_top1")
    out.append(check("natural: clean ≥ 88%", _p(nc), None if nc is None else nc >= 0.88))
    for eps, need in ((e0, 0.40), (e2, 0.65)):
        r = get("natural", f"robust_top1@{eps}")
        drop = None if r is None else nc - r
        out.append(check(f"natural: the attack takes ≥ {100 * need:.0f} points at ε = {eps}",
                         None if drop is None else f"{100 * drop:.1f} points",
                         None if drop is None else drop >= need))
    for algo, gap, extra in (("uat", 0.05, 0.82), ("lowcost", 0.10, None)):
        c, r = get(algo, "clean_top1"), get(algo, f"robust_top1@{e0}")
        g = None if c is None or r is None else c - r
        out.append(check(f"{algo}: attacked within {100 * gap:.0f} points of clean at ε = {e0}",
                         None if g is None else f"{100 * g:.1f} points", None if g is None else g <= gap))
        if extra is not None:
            out.append(check(f"{algo}: clean ≥ {100 * extra:.0f}%", _p(c), None if c is None else c >= extra))
    order = ["natural", "fgsm", "lowcost", "uat"]
    rob = [get(a, f"robust_top1@{e0}") for a in order]
    ok = None if None in rob else (rob[0] < rob[1] < rob[2] <= rob[3])
    out.append(check(f"ordering under attack at ε = {e0}: natural < FGSM < low-cost ≤ uFGSM",
                     " / ".join(_p(v) for v in rob), ok))
    r = get("natural", f"robust_top1@{e0}")
    out.append(check(f"natural: the strong attack leaves at most {100 * STRONG_TARGET_NATURAL:.0f}% at ε = {e0}",
                     _p(r), None if r is None else r <= STRONG_TARGET_NATURAL))
    f = get("natural", f"fixed_top1@{e0}")
    out.append(check(f"natural: the strong attack at least 3 points below the best fixed pattern at ε = {e0}",
                     None if r is None or f is None else f"{100 * (f - r):.1f} points",
                     None if r is None or f is None else f - r >= 0.03))
    # the universal adversarial training that holds against the strong attack (the pool variants)
    for algo, label, gap in (("uat_pool", "uFGSM + pool", 0.06), ("lowcost_pool", "low-cost + pool", 0.10)):
        c, r, f = get(algo, "clean_top1"), get(algo, f"robust_top1@{e0}"), get(algo, f"fixed_top1@{e0}")
        out.append(check(f"{label}: clean ≥ 85%", _p(c), None if c is None else c >= 0.85))
        out.append(check(f"{label}: the strong attack within {100 * gap:.0f} points of clean at ε = {e0}",
                         None if c is None or r is None else f"{100 * (c - r):.1f} points",
                         None if c is None or r is None else c - r <= gap))
        out.append(check(f"{label}: the best fixed pattern takes at most 3 points at ε = {e0}",
                         None if c is None or f is None else f"{100 * (c - f):.1f} points",
                         None if c is None or f is None else c - f <= 0.03))
    order = ["natural", "fgsm", "lowcost_pool", "uat_pool"]
    rob = [get(a, f"robust_top1@{e0}") for a in order]
    out.append(check(f"ordering with the pool models at ε = {e0}: natural < FGSM < low-cost pool ≤ uFGSM pool",
                     " / ".join(_p(v) for v in rob), None if None in rob else (rob[0] < rob[1] < rob[2] <= rob[3])))
    for eps, ref in REFERENCE_NATURAL.items():
        if eps in d["eps"]:
            r = get("natural", f"robust_top1@{eps}")
            out.append(check(f"natural, ε = {eps}: no more than the reference attack's {100 * ref:.0f}% left",
                             _p(r), None if r is None else r <= ref))
    return out + _targets_of_issue_22(rows, e0)


def lowest(r: dict | None, eps) -> float | None:
    """A row's robustness at ``eps``: the lowest of the strong attack, the best fixed pattern and (where measured)
    the held-out protocol's figure; None without the strong attack's."""
    if r is None or r.get(f"robust_top1@{eps}") is None:
        return None
    keys = (f"robust_top1@{eps}", f"fixed_top1@{eps}", f"heldout_robust_top1@{eps}")
    return min(r[k] for k in keys if r.get(k) is not None)


def largest_loss(r: dict | None, eps) -> float | None:
    """The most top-1 a row loses at ``eps`` to the strong attack or the best fixed pattern (against clean accuracy
    on the whole test split) or to the held-out protocol (against clean accuracy on the half it scores)."""
    if r is None or r.get(f"robust_top1@{eps}") is None:
        return None
    losses = [r["clean_top1"] - r[k] for k in (f"robust_top1@{eps}", f"fixed_top1@{eps}") if r.get(k) is not None]
    if r.get(f"heldout_robust_top1@{eps}") is not None:
        losses.append(r[f"heldout_clean_top1@{eps}"] - r[f"heldout_robust_top1@{eps}"])
    return max(losses)


def _targets_of_issue_22(rows: dict[str, dict], e0) -> list[dict]:
    """The paper's picture (issue 22): natural ≥ 90% clean and ≤ 25% attacked; the universal defences ≥ 88% clean;
    the pool models lose at most 8 points to every attack, the held-out protocol included; judged on ``lowest``."""
    def clean(algo):
        return rows.get(algo, {}).get("clean_top1")
    out = []
    c, r = clean("natural"), lowest(rows.get("natural"), e0)
    out.append(check(f"natural (the paper's picture): clean ≥ 90% and at most 25% left at ε = {e0}",
                     None if r is None else f"{_p(c)} / {_p(r)}", None if r is None else c >= 0.90 and r <= 0.25))
    for algo, label in (("uat", "uFGSM"), ("lowcost", "low-cost"), ("uat_pool", "uFGSM + pool"),
                        ("lowcost_pool", "low-cost + pool")):
        c = clean(algo)
        out.append(check(f"{label}: clean ≥ 88%", _p(c), None if c is None else c >= 0.88))
    for algo, label in (("uat_pool", "uFGSM + pool"), ("lowcost_pool", "low-cost + pool")):
        loss = largest_loss(rows.get(algo), e0)
        out.append(check(f"{label}: loses at most 8 points to the strong attack, every fixed pattern and the "
                         f"held-out protocol at ε = {e0}", None if loss is None else f"{100 * loss:.1f} points",
                         None if loss is None else loss <= 0.08))
    return out


def _perturbed_top1(model, test, delta: torch.Tensor | None) -> float:
    """Top-1 of ``model`` on the test split + δ (clean with None): one pass, top-1 only."""
    top, _ = predict(model, test.images, delta, topk=1)
    return (top[:, 0] == test.labels.cpu()).float().mean().item()


def _p(v):
    return "—" if v is None else f"{100 * v:.1f}"


def render(d: dict, study_rows: list[dict] | None = None) -> str:
    """docs/results.md from its JSON twin ``d``; ``study_rows``: the vulnerability study's measured rows
    (``uat_core.recipes.study.load_results``), summarised in a section of their own."""
    eps = d["eps"]
    arch = "ResNet-20" if d["dataset"] == "cifar10" else "small CNN"
    epochs = d.get("attack_epochs", protocol.EPOCHS)
    where = sorted({trained_on(r.get("trained_on")) for r in d["rows"]})
    L = [f"# Results: the paper's CIFAR-10 tables at small scale ({d['dataset']})", "",
         f"Generated by `{d['command']}` on {d['date']} ({d['machine']}, torch {d['torch']}, "
         f"{d['seconds'] / 60:.1f} min). Do not edit by hand."
         + (f" {d['reused']} of its {d['attacks']} perturbations were reused from `runs/report_cache`, where an "
            "earlier run of the same command (same model sha256, attack, ε, attack size and epochs; possibly on "
            "another machine) saved them." if d.get("reused") else ""), "",
         f"Every zoo model is attacked from scratch, at each ε, by two universal attacks built on {d['attack_size']} "
         f"training images and evaluated on all {d['test_size']} test images"
         + (" of the shared JPEG copy of CIFAR-10 (pixel values differ slightly from the binary release)"
            if d["dataset"] == "cifar10" else "") + ":", "",
         f"- **Alg. 2**: the paper's attack from δ = 0 (sign-gradient ascent on the clipped loss, β = 9, {epochs} "
         "epochs, batch 128).",
         "- **fixed**: the best fixed pattern of the structured bank (stripes, checkerboards, colours at ±ε; no "
         "optimisation), chosen on the attack images. Every attack must beat it; one that does not is marked ✗.",
         f"- **strong**: the strong universal attack (`--strong`: the bank and random starts screened, Alg. 2 refined "
         f"from the best starts and from zero with successive halving, {epochs} epochs for the winner). "
         "**The robustness figures of this project are these.**",
         f"- **PGD**: per-instance PGD-{d.get('pgd_steps', PGD_STEPS)} (a different δ for every image: an upper "
         f"bound on any universal attack), on a stratified slice of {d.get('pgd_size', 0)} test images.", "",
         f"**Different architecture and budget from the paper**: ours is a {arch} trained for tens of epochs at "
         f"most, on {' and '.join(where)} (the recipe column has each model's epochs, batch, schedule and PGD K; "
         "train time is wall-clock where it was trained); the paper's is a WRN 32-10 trained to convergence and "
         "attacked from δ = 0. Compare orderings and gaps, not absolute numbers.", "",
         "| model | recipe | trained on | train time (s) | clean top-1 (%) | strong, ε = "
         + " / ".join(str(e) for e in eps) + " (%) | paper: clean / attacked at ε = 8 (%) |",
         "|---|---|---|---:|---:|---:|---|"]
    for r in d["rows"]:
        paper = PAPER.get(r["algorithm"]) if d["dataset"] == "cifar10" else None
        ft = f" (fine-tuned from `{r['fine_tuned_from']}`)" if r.get("fine_tuned_from") else ""
        L.append(f"| {LABELS.get(r['algorithm'], r['algorithm'])}{ft} | `{r.get('recipe') or '—'}` | "
                 f"{trained_on(r.get('trained_on'))} | {r['train_seconds']:.0f} | {_p(r['clean_top1'])} | "
                 + " / ".join(_p(r.get(f"robust_top1@{e}")) for e in eps)
                 + f" | {'%.1f / %.1f' % paper if paper else '—'} |")
    for e in eps:
        L += ["", f"### ε = {e}: every attack side by side (top-1 %, lower is a stronger attack)", "",
              "| model | clean | Alg. 2 (δ = 0) | best fixed pattern | strong | strong's winning start | "
              "per-instance PGD |", "|---|---:|---:|---:|---:|---|---:|"]
        for r in d["rows"]:
            fx, a2, st = r.get(f"fixed_top1@{e}"), r.get(f"alg2_top1@{e}"), r.get(f"robust_top1@{e}")

            def flag(v, fx=fx):
                return "" if v is None or fx is None or v < fx else " ✗"
            L.append(f"| {LABELS.get(r['algorithm'], r['algorithm'])} | {_p(r['clean_top1'])} | {_p(a2)}{flag(a2)} | "
                     f"{_p(fx)} (`{r.get(f'fixed_pattern@{e}', '—')}`) | **{_p(st)}**{flag(st)} | "
                     f"`{r.get(f'start@{e}', '—')}` | {_p(r.get(f'pgd_top1@{e}'))} |")
    if d.get("targets"):
        mark = {True: "met", False: "**not met**", None: "no model yet"}
        L += ["", "## Targets", "",
              "Checked by the report itself from the strong attack's figures above (a small ResNet-20, so most "
              "targets are relative).",
              "", "| target | measured | |", "|---|---|---|"]
        L += [f"| {t['target']} | {t['measured'] or '—'} | {mark[t['met']]} |" for t in d["targets"]]
    e0 = eps[0]
    held = [r for r in d["rows"] if r.get(f"heldout_robust_top1@{e0}") is not None]
    if held:
        r0 = held[0]
        L += ["", f"## Held-out protocol (ε = {e0}): δ built and picked on test images the model never saw", "",
              f"A model trained against fixed patterns on the training images can flatter the protocol above: the "
              f"attack then picks its δ on images the model has fitted. Here the test split is cut into stratified "
              f"halves; the strong attack and the best fixed pattern are built and picked on "
              f"{r0[f'heldout_attack_size@{e0}']} images of the first half and scored on the "
              f"{r0[f'heldout_score_size@{e0}']:,} images of the second, beside the δ built on training images "
              f"(the table above) scored on the same half. **The model's robustness is the lowest of the three.** "
              f"Made by `{d.get('heldout_command', 'python -m uat_core.zoo heldout')}`.", "",
              "| model | clean (half B) | training-built strong δ | strong, built on half A | best fixed, picked on "
              "half A | robustness (lowest) |", "|---|---:|---:|---:|---:|---:|"]
        for r in held:
            L.append(f"| {LABELS.get(r['algorithm'], r['algorithm'])} | {_p(r.get(f'heldout_clean_top1@{e0}'))} | "
                     f"{_p(r.get(f'train_strong_on_heldout_top1@{e0}'))} | {_p(r.get(f'heldout_strong_top1@{e0}'))} "
                     f"| {_p(r.get(f'heldout_fixed_top1@{e0}'))} (`{r.get(f'heldout_fixed_pattern@{e0}', '—')}`) | "
                     f"**{_p(r.get(f'heldout_robust_top1@{e0}'))}** |")
    if study_rows:
        L += ["", "## What makes a natural model vulnerable (the study)", "",
              study.summary(study_rows, study.reference_from(d)), "",
              "CIFAR-10 classifiers that differ from one base recipe in one factor, each measured with the protocol "
              "above at ε = 8 (top-1 %; commands, machines and the GPU rows in [study.md](study.md)):", "",
              study.table(study_rows).rstrip()]
    t = d["transfer"]
    L += ["", f"## Transfer (ε = {eps[0]})", "",
          "Accuracy (%) of the column's model under the strong universal perturbation made on the row's model.", "",
          "| δ made on \\ evaluated on | " + " | ".join(LABELS.get(n, n) for n in t["targets"]) + " |",
          "|---|" + "---:|" * len(t["targets"])]
    for s, row in zip(t["sources"], t["matrix"]):
        L.append(f"| {LABELS.get(s, s)} | " + " | ".join(_p(v) for v in row) + " |")
    L += ["", "Raw figures: the JSON file beside this one.", ""]
    return "\n".join(L)

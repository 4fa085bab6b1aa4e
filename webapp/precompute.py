"""The results every page opens with, computed once and shipped in ``webapp/precomputed/<dataset>.pt``.

    python -m webapp.precompute --dataset digits                 # about 5 minutes on 2 CPU cores
    python -m webapp.precompute --dataset cifar10 --pages lab,transfer
    python -m webapp.precompute --dataset digits --pages uat     # only the training histories

Each page's default settings (:mod:`webapp.settings`) run through the very job the page runs when a
visitor presses Run (:func:`webapp.jobs.page_job`), against the zoo models of ``assets/models``; the
result is stored under the same key the page looks up, which names the zoo model by its sha256, so a
rebuilt zoo model never shows a stale result. The file holds only tensors, numbers, strings and lists
and is read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import settings as S

HERE = Path(__file__).resolve().parent
PAGES = ("lab", "beta", "race", "idf", "size", "transfer", "uat", "bank")


def precomputed_path(ds: str) -> Path:
    return HERE / "precomputed" / f"{ds}.pt"


def load_precomputed(ds: str) -> dict:
    """key -> result, plus "extras" (e.g. the zoo's training histories); {} when there is no file."""
    p = precomputed_path(ds)
    if not p.is_file():
        return {}
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:                       # a broken file must not take the app down: pages fall back
        return {}
    out = dict(blob.get("results", {}))
    out["extras"] = blob.get("extras", {})
    return out


def _zoo_histories(ds: str, entries: dict) -> dict:
    """The training histories of the zoo models (from their training runs in runs/zoo, if present)."""
    from uat_core.zoo import RUNS
    out = {}
    for algo, e in entries.items():
        run = RUNS / e["name"]
        mfile = run / "metrics.json"
        if not mfile.is_file():
            continue
        hist = json.loads(mfile.read_text()).get("history", [])
        item = {"sha": e["sha256"], "history": hist}
        if (run / "delta.pt").is_file():
            d = torch.load(run / "delta.pt", map_location="cpu", weights_only=True)
            if isinstance(d, torch.Tensor):
                item["train_delta"] = d.float()
        out[algo] = item
    return out


def compute(ds: str, pages=PAGES, log=print, save=None) -> dict:
    """Run the default job of each page on ``ds`` and return the updated file contents.

    ``save(blob)``, if given, is called after every page, so an interrupted run keeps what it finished.
    """
    from uat_core.data import load_dataset
    from uat_core.zoo import list_models, load_zoo_model, load_zoo_perturbation

    from .jobs import page_job

    found = {e["algorithm"]: e for e in list_models(ds)}
    entries = {a: found[a] for a in S.ALGO_ORDER if a in found} | {a: e for a, e in found.items()
                                                                  if a not in S.ALGO_ORDER}
    if "natural" not in entries:
        raise SystemExit(f"no natural {ds} model in the zoo: build it first (python -m uat_core.zoo build)")
    train = load_dataset(ds, "train", progress=False)
    old = load_precomputed(ds)
    extras = old.pop("extras", {})
    results = {k: v for k, v in old.items() if k.split("|", 1)[0] not in pages}
    nat = entries["natural"]
    model, _ = load_zoo_model(nat["name"])
    for page in pages:
        t0 = time.perf_counter()
        if page == "uat":
            # keep the histories of models whose training run is not on this machine (same sha: same model)
            kept = {a: it for a, it in extras.get("uat_histories", {}).items()
                    if a in entries and it.get("sha") == entries[a]["sha256"]}
            extras["uat_histories"] = {**kept, **_zoo_histories(ds, entries)}
            log(f"uat: training histories of {', '.join(extras['uat_histories']) or 'no'} zoo models")
            if save is not None:
                save({"version": 1, "dataset": ds, "results": results, "extras": extras})
            continue
        s = S.defaults(page, ds)
        test = load_dataset(ds, "test", progress=False).subset(s["test_size"], seed=0)
        if page == "transfer":
            chosen = [a for a, e in entries.items() if e.get("perturbation")]
            s = {**s, "models": chosen}
            models = {S.ALGO_SHORT.get(a, a): load_zoo_model(entries[a]["name"])[0] for a in chosen}
            deltas = {S.ALGO_SHORT.get(a, a): load_zoo_perturbation(entries[a]["name"]) for a in chosen}
            job = page_job(page, s, train, test, models=models, deltas=deltas)
            tag = S.zoo_set_tag([entries[a] for a in chosen])
        else:
            job = page_job(page, s, train, test, model=model)
            tag = S.zoo_tag(nat)
        res = job.finish()
        if job.error:
            raise SystemExit(f"{page}: {job.error}")
        results[S.key(page, ds, tag, s)] = res
        log(f"{page}: done in {time.perf_counter() - t0:.1f} s (compute {job.compute_seconds:.1f} s)")
        if save is not None:
            save({"version": 1, "dataset": ds, "results": results, "extras": extras})
    return {"version": 1, "dataset": ds, "results": results, "extras": extras}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m webapp.precompute", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits", choices=S.DATASETS)
    ap.add_argument("--pages", default=",".join(PAGES), help=f"comma-separated subset of {', '.join(PAGES)}")
    args = ap.parse_args(argv)
    pages = [p for p in args.pages.split(",") if p]
    bad = [p for p in pages if p not in PAGES]
    if bad:
        print(f"error: unknown page '{bad[0]}': choose from {', '.join(PAGES)}", file=sys.stderr)
        return 2
    from uat_core.fileio import atomic_write
    path = precomputed_path(args.dataset)

    def save(blob):
        atomic_write(path, lambda tmp: torch.save(blob, tmp))

    blob = compute(args.dataset, pages, save=save)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB, {len(blob['results'])} results)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

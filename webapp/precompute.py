"""The results every page opens with, computed once and shipped in ``webapp/precomputed/<dataset>.pt``.

    python -m webapp.precompute --dataset digits                 # about 5 minutes on 2 CPU cores
    python -m webapp.precompute --dataset cifar10 --pages lab,transfer
    python -m webapp.precompute --dataset digits --pages uat     # only the training histories

Each page's default settings run through the very job the page runs when a visitor presses Run (its spec's
``ship`` in :mod:`webapp.pages_spec` calls :func:`webapp.pages_spec.page_job`), against the zoo models of
``assets/models``; the result is stored under the same key the page looks up, which names the zoo model by
its sha256, so a rebuilt zoo model never shows a stale result. The file holds only tensors, numbers,
strings and lists and is read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from uat_core.engine.data import load_dataset
from uat_core.engine.fileio import atomic_write
from uat_core.zoo import list_models, load_zoo_model

from . import settings as S
from .pages_spec import PAGES as SPECS
from .pages_spec import Shipping

HERE = Path(__file__).resolve().parent
PAGES = tuple(p.id for p in SPECS.values() if p.ship is not None)     # the pages with a shipped result


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


def compute(ds: str, pages=PAGES, log=print, save=None) -> dict:
    """Run the default job of each page on ``ds`` and return the updated file contents.

    ``save(blob)``, if given, is called after every page, so an interrupted run keeps what it finished.
    """
    entries = S.paper_order({e["algorithm"]: e for e in list_models(ds)})
    if "natural" not in entries:
        raise SystemExit(f"no natural {ds} model in the zoo: build it first (python -m uat_core.zoo build)")
    old = load_precomputed(ds)
    extras = old.pop("extras", {})
    results = {k: v for k, v in old.items() if S.page_of(k) not in pages}
    ctx = Shipping(ds, entries, load_dataset(ds, "train", progress=False),
                   load_zoo_model(entries["natural"]["name"])[0], extras, log)
    for page in pages:
        t0 = time.perf_counter()
        ship = SPECS[page].ship
        shipped = ship(page, ctx) if ship is not None else None
        if shipped is not None:                     # (None: the page ships extras only, already in ctx.extras)
            s, tag, job = shipped
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
    path = precomputed_path(args.dataset)

    def save(blob):
        atomic_write(path, lambda tmp: torch.save(blob, tmp))

    blob = compute(args.dataset, pages, save=save)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB, {len(blob['results'])} results)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

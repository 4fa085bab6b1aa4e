"""Benchmark of the training algorithms: per-epoch wall time as a ratio to natural training, same run.

    python bench/bench_training.py --data-root ../shared/data/cifar10-jpeg                # the protocol
    python bench/bench_training.py --data-root ../shared/data/cifar10-jpeg --markdown     # docs section
    python bench/bench_training.py --dataset digits --model smallcnn --train-size 1280    # no CIFAR-10

Default: ResNet-20 on a 2,560-image CIFAR-10 training subset, batch 128, crop+flip augmentation,
1 epoch per measurement, 2 repeats, ε = 8. For each of natural, ``uat`` (Alg. 3), ``lowcost`` (Alg. 4),
``fgsm`` and ``pgd`` (K = 7) it trains a freshly initialised model (same seed, same batches). The
trainers run side by side and are interleaved *step by step* (one step of each, in an order that rotates
every step), and every step is timed on its own: batch gathering, augmentation, passes and updates, not
model creation. So a busy machine slows all algorithms alike. Per algorithm the table gives the epoch
time (the sum of its step times), its ratio to natural within each repeat (median and range over the
repeats) and, as a noise-robust cross-check, the paired ratio: each step's time over the natural step
of the same round (run right next to it), median over all rounds.

The claims checked: ``lowcost`` costs about one natural step (target ≤ 1.05×: one forward, one backward,
the δ gradient comes out of the same backward), ``uat`` about two (target ≤ 1.9×: its second pass
needs only the input gradient, the weights are frozen there). The named variants ``uat_pool`` and
``lowcost_pool`` (a pool of 4 universal δs in the same passes) are measured against their plain
algorithm in the same rounds (target ≤ 1.05×):
``--algorithms natural,uat,lowcost,uat_pool,lowcost_pool``. The "after ascent" tracking forwards are
instrumentation and off here (``--track-every 0``); pass ``--track-every 10`` to see their cost.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


from uat_core.engine.data import load_dataset
from uat_core.engine.device import pick_device
from uat_core.engine.errors import UATError
from uat_core.recipes.pipeline import new_model
from uat_core.engine.training import ALGORITHMS, Trainer
from uat_core.recipes.profiles import ALGORITHMS as NAMED
from uat_core.recipes.profiles import train_defaults

ROOT = Path(__file__).resolve().parents[1]

# the named variants measured against their plain algorithm: the pool of δs (profiles.ALGORITHMS)
VARIANTS = {a: (v.trains_as, v.overrides) for a, v in NAMED.items() if v.overrides.get("delta_pool", 1) > 1}


def resolve_variant(name: str) -> tuple[str, dict]:
    """(TrainConfig algorithm, overrides) of an algorithm or a named variant such as "uat_pool"."""
    return VARIANTS.get(name, (name, {}))

TARGETS = {"natural": 1.0, "lowcost": 1.05, "uat": 1.9}
PAPER = {"natural": "1×", "lowcost": "≈1×", "uat": "≈2×", "fgsm": "≈2×", "pgd": "K+1×", "uat_pool": "-",
         "lowcost_pool": "-"}
VARIANT_TARGET = 1.05     # a named variant (the pool of δs) costs at most this × its plain algorithm


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="cifar10", help="cifar10 | digits")
    ap.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    ap.add_argument("--model", default="resnet20", help="architecture (default resnet20)")
    ap.add_argument("--train-size", type=int, default=2560, help="training images (stratified subset)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per measurement")
    ap.add_argument("--repeats", type=int, default=2, help="measurements per algorithm (interleaved)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eps", type=float, default=8.0, help="ε in 0-255 units")
    ap.add_argument("--pgd-steps", type=int, default=7, help="K of the pgd baseline")
    ap.add_argument("--track-every", type=int, default=0, help="uat/lowcost 'after ascent' probe every k steps")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated subset")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--amp", action="store_true", help="CUDA: bfloat16 autocast")
    ap.add_argument("--channels-last", action="store_true", help="CUDA: channels-last memory format")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown section for docs/benchmarks.md")
    return ap.parse_args(argv)


def make_trainer(algo: str, args, train, device) -> Trainer:
    base, extra = resolve_variant(algo)
    cfg = train_defaults(args.dataset, algorithm=base, epochs=args.epochs, **extra,
                             batch_size=args.batch_size, eps=args.eps, pgd_steps=args.pgd_steps,
                             track_every=args.track_every, snapshot_every=0, seed=0, amp=args.amp,
                             channels_last=args.channels_last)
    if args.dataset == "cifar10":
        cfg.augment = cfg.flip = True
    return Trainer(new_model(args.model, train, 0), train, cfg, device=device)


def one_step(it, device) -> float:
    """Seconds to the trainer's next "step" event (an epoch's end rides on the step before it); on CUDA
    the GPU is drained before both clock readings, so queued work is charged to the step that queued it."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    while next(it).kind != "step":
        pass
    sync()
    return time.perf_counter() - t0


def measure(algos: list[str], args, train, device, rotate: int = 0) -> tuple[dict, dict]:
    """One repeat: {algo: [seconds of each step]}, {algo: passes per step}, the trainers interleaved."""
    trainers = {a: make_trainer(a, args, train, device) for a in algos}
    its = {a: iter(t) for a, t in trainers.items()}
    steps = {a: [] for a in algos}
    for s in range(trainers[algos[0]].total):
        k = (s + rotate) % len(algos)
        for a in algos[k:] + algos[:k]:
            steps[a].append(one_step(its[a], torch.device(device)))
    passes = {a: {k: v / t.step_i for k, v in t.passes.items()} for a, t in trainers.items()}
    return steps, passes


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    algos = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    known = [*ALGORITHMS, *VARIANTS]
    bad = [a for a in algos if a not in known]
    missing = [resolve_variant(a)[0] for a in algos if a in VARIANTS and resolve_variant(a)[0] not in algos]
    if bad or "natural" not in algos or missing:
        print(f"error: --algorithms must include natural (and the plain algorithm of each variant) and only "
              f"{', '.join(known)}", file=sys.stderr)
        return 2
    try:
        device = pick_device(args.device)
        train = load_dataset(args.dataset, "train", args.data_root, limit=args.train_size, progress=False)
    except UATError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    steps = len(train) // args.batch_size
    print(f"# {args.model} on {len(train)} {args.dataset} images, batch {args.batch_size} ({steps} steps/epoch), "
          f"{args.epochs} epoch(s) × {args.repeats} repeats, device {device}, {torch.get_num_threads()} thread(s)",
          file=sys.stderr)

    # warm-up: allocator, thread pool, first-call kernels
    measure(algos, argparse.Namespace(**{**vars(args), "epochs": 1}), train.subset(2 * args.batch_size, 1), device)

    times = {a: [] for a in algos}          # seconds per epoch, one per repeat
    ratios = {a: [] for a in algos}         # epoch time / natural's, within a repeat
    paired = {a: [] for a in algos}         # step time / natural's step of the same round
    for r in range(args.repeats):
        t0 = time.perf_counter()
        steps, passes = measure(algos, args, train, device, rotate=r)
        for a in algos:
            times[a].append(sum(steps[a]) / args.epochs)
            ratios[a].append(sum(steps[a]) / sum(steps["natural"]))
            paired[a] += [t / n for t, n in zip(steps[a], steps["natural"])]
        print(f"repeat {r + 1} ({time.perf_counter() - t0:.0f} s): " +
              ", ".join(f"{a} {times[a][-1]:.1f} s ({ratios[a][-1]:.2f}×)" for a in algos), file=sys.stderr, flush=True)

    table = ["| algorithm | passes per step (fwd + bwd) | s / epoch (median) | × natural (median, range) "
             "| × natural, paired steps (median) | target | paper |", "|---|---|---|---|---|---|---|"]
    plain = {a: [x / y for x, y in zip(times[a], times[resolve_variant(a)[0]])] for a in algos if a in VARIANTS}
    for a in algos:
        p = passes[a]
        rng = f"{min(ratios[a]):.2f}-{max(ratios[a]):.2f}"
        target = f"≤ {TARGETS[a]:.2f}" if a in TARGETS and a != "natural" else "-"
        if a in plain:
            target = (f"≤ {VARIANT_TARGET:.2f}× {resolve_variant(a)[0]}: "
                      f"**{statistics.median(plain[a]):.2f}×** ({min(plain[a]):.2f}-{max(plain[a]):.2f})")
        table.append(f"| {a if a != 'pgd' else f'pgd (K = {args.pgd_steps})'} | {p['forward']:g} + {p['backward']:g} "
                     f"| {statistics.median(times[a]):.2f} | **{statistics.median(ratios[a]):.2f}** ({rng}) "
                     f"| {statistics.median(paired[a]):.2f} | {target} | {PAPER[a]} |")
    cmd = "python bench/bench_training.py " + " ".join(sys.argv[1:] if argv is None else argv)
    cpu = platform.processor() or platform.machine()
    if args.markdown:
        print(f"Command: `{cmd}`  \n{_dt.date.today().isoformat()}, {cpu}, {os.cpu_count()} logical CPUs, "
              f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, device {device}.\n")
    print("\n".join(table))
    ok = all(statistics.median(ratios[a]) <= TARGETS[a] for a in algos if a in TARGETS and a != "natural")
    ok = ok and all(statistics.median(v) <= VARIANT_TARGET for v in plain.values())
    print(f"\ntargets {'met' if ok else 'NOT met'} (lowcost ≤ 1.05×, uat ≤ 1.9× natural; each pool variant "
          f"≤ {VARIANT_TARGET}× its plain algorithm)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

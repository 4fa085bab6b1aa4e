"""Benchmark of the strong universal attack against plain Alg. 2 and the best fixed pattern, in the same run.

    python bench/bench_strong.py --data-root ../shared/data/cifar10-jpeg --markdown     # the record
    python bench/bench_strong.py --cifar-models natural --skip-digits --skip-idf         # one model, quicker

Figures printed (each with the time of the attack that made it):

1. **CIFAR-10 zoo models** (default natural, uat, lowcost), ε = 8: plain Alg. 2 from δ = 0 (the paper's attack,
   ``--epochs`` epochs), the best fixed pattern of the bank (no optimisation; chosen on the attack images), and
   the strong attack (same epochs for its winner), each built on ``--attack-size`` training images and
   evaluated on the whole test split. Targets on the natural model: strong ≤ 55% and at least 3 points below
   the best fixed pattern; strong time ≤ 3× plain Alg. 2's.
2. **digits zoo models**, ε = 32: the strong attack must be at least as strong as plain Alg. 2 on every one.
3. **iDeepFool**, one pass over the same attack images: candidate-class gradients by one backward per class
   (the loop) against one vectorised backward (``is_grads_batched``), as a ratio of times.

Timed runs are sequential in one process; a busy machine slows all of them alike, so read the ratios.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

import torch


from uat_core.recipes import protocol
from uat_core.engine.attacks import IDeepFool, IDFConfig
from uat_core.engine.data import load_dataset
from uat_core.engine.errors import UATError
from uat_core.engine.evaluation import predict

ROOT = Path(__file__).resolve().parents[1]


def top1(model, test, delta) -> float:
    top, _ = predict(model, test.images, delta, topk=1)
    return (top[:, 0] == test.labels).float().mean().item()


def compare(model, train, test, eps: float, epochs: int) -> dict:
    """Plain Alg. 2, the best fixed pattern and the strong attack on one model (same attack images)."""
    t = time.perf_counter()
    plain = protocol.attack_run(model, train, "alg2", eps, epochs).run()
    t_plain = time.perf_counter() - t
    t = time.perf_counter()
    strong = protocol.attack_run(model, train, "strong", eps, epochs).run()
    t_strong = time.perf_counter() - t
    return {"clean": top1(model, test, None), "alg2": top1(model, test, plain.delta), "alg2_s": t_plain,
            "fixed": top1(model, test, strong.best_fixed), "fixed_name": strong.config["best_fixed"]["name"],
            "strong": top1(model, test, strong.delta), "strong_s": t_strong, "start": strong.config["start"]}


def idf_pass(model, train, eps: float, batched: bool) -> tuple[float, int, torch.Tensor]:
    run = IDeepFool(model, train.float_images(), train.labels, IDFConfig(eps=eps, xi=1.0, max_passes=1,
                                                                          snapshot_every=0, batched=batched))
    t = time.perf_counter()
    res = run.run()
    return time.perf_counter() - t, res.config["backwards"], res.delta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    ap.add_argument("--cifar-models", default="natural,uat,lowcost",
                    help="comma-separated zoo algorithms to measure on CIFAR-10 ('' = none)")
    ap.add_argument("--attack-size", type=int, default=2000, help="CIFAR-10 training images per attack (≤ 5000)")
    ap.add_argument("--epochs", type=int, default=10, help="Alg. 2 epochs (the strong attack's winner gets as many)")
    ap.add_argument("--idf-size", type=int, default=2000, help="attack images of the iDeepFool pass")
    ap.add_argument("--skip-digits", action="store_true", help="leave out the digits comparison")
    ap.add_argument("--digits-models", default="natural,uat,lowcost,uat_pool,lowcost_pool,fgsm,pgd,uadam",
                    help="comma-separated zoo algorithms to measure on digits (default: every digits zoo model)")
    ap.add_argument("--skip-idf", action="store_true", help="leave out the iDeepFool comparison")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md section")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (1 <= args.attack_size <= 5000) or args.epochs < 1 or args.idf_size < 1:
        print("error: --attack-size must be in [1, 5000], --epochs and --idf-size at least 1", file=sys.stderr)
        return 2
    from uat_core.zoo import load_zoo_model, zoo_name
    load0 = os.getloadavg()[0]
    lines = []
    cmd = "python bench/bench_strong.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        algos = [a for a in args.cifar_models.split(",") if a]
        if algos or not args.skip_idf:
            train = load_dataset("cifar10", "train", args.data_root, limit=args.attack_size, seed=0, progress=False)
            test = load_dataset("cifar10", "test", args.data_root, progress=False)
        if algos:
            lines += [f"CIFAR-10, ε = 8, attack built on {len(train)} training images, {args.epochs} epochs; "
                      f"top-1 on all {len(test)} test images.", "",
                      "| model | clean | Alg. 2 from δ = 0 | best fixed pattern | strong attack (winning start) | "
                      "strong − fixed | time: Alg. 2 / strong | strong / Alg. 2 time |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for a in algos:
            model, _ = load_zoo_model(zoo_name("cifar10", a))
            r = compare(model, train, test, 8.0, args.epochs)
            lines.append(f"| {a} | {100 * r['clean']:.1f} | {100 * r['alg2']:.1f} | {100 * r['fixed']:.1f} "
                         f"(`{r['fixed_name']}`) | **{100 * r['strong']:.1f}** (`{r['start']}`) | "
                         f"{100 * (r['strong'] - r['fixed']):+.1f} | {r['alg2_s']:.0f} s / {r['strong_s']:.0f} s | "
                         f"**{r['strong_s'] / r['alg2_s']:.2f}×** |")
            print(lines[-1], file=sys.stderr, flush=True)
        if not args.skip_digits:
            dtrain = load_dataset("digits", "train", progress=False)
            dtest = load_dataset("digits", "test", progress=False)
            lines += ["", f"digits, ε = 32, attack built on all {len(dtrain)} training images, {args.epochs} epochs; "
                      f"top-1 on the {len(dtest)} test images.", "",
                      "| model | clean | Alg. 2 from δ = 0 | best fixed pattern | strong attack | strong ≤ Alg. 2 | "
                      "strong / Alg. 2 time |", "|---|---:|---:|---:|---:|---|---:|"]
            for a in [a for a in args.digits_models.split(",") if a]:
                model, _ = load_zoo_model(zoo_name("digits", a))
                r = compare(model, dtrain, dtest, 32.0, args.epochs)
                lines.append(f"| {a} | {100 * r['clean']:.1f} | {100 * r['alg2']:.1f} | {100 * r['fixed']:.1f} | "
                             f"**{100 * r['strong']:.1f}** | {'yes' if r['strong'] <= r['alg2'] else '**no**'} | "
                             f"{r['strong_s'] / r['alg2_s']:.2f}× |")
                print(lines[-1], file=sys.stderr, flush=True)
        if not args.skip_idf:
            model, _ = load_zoo_model(zoo_name("cifar10", "natural"))
            sub = train.subset(min(args.idf_size, len(train)), 0)
            t_loop, nb, d_loop = idf_pass(model, sub, 8.0, batched=False)
            t_vec, _, d_vec = idf_pass(model, sub, 8.0, batched=True)
            same = torch.allclose(d_loop, d_vec, atol=1e-5)
            lines += ["", f"iDeepFool on the CIFAR-10 natural model, one pass over {len(sub)} images (ε = 8, "
                      f"{nb} class gradients):", "",
                      "| candidate-class gradients | time | ratio to the loop |", "|---|---:|---:|",
                      f"| one backward per class (loop) | {t_loop:.1f} s | 1.00× |",
                      f"| one vectorised backward (`is_grads_batched`) | {t_vec:.1f} s | **{t_vec / t_loop:.2f}×** |",
                      "", f"Same δ from both: {'yes' if same else '**no**'}."]
    except UATError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dev = "cpu"
    head = [f"Command: `{cmd.strip()}`  ",
            f"Run {_dt.date.today().isoformat()} on {platform.processor() or platform.machine()}, {os.cpu_count()} "
            f"logical CPUs; device {dev}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; load "
            f"average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.", ""]
    print("\n".join(head + lines) if args.markdown else "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

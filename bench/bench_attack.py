"""Benchmark of the attack engine against the floor it cannot beat, measured in the same run.

    python bench/bench_attack.py --data-root ../shared/data/cifar10-jpeg            # the full protocol
    python bench/bench_attack.py --epochs 3 --repeats 2 --markdown                   # quicker; docs section

Three figures, for ResNet-20 on CIFAR-10 training images (default 2,000 images × 10 epochs, batch 128):

1. **Alg. 2 vs. its floor.** Every Alg. 2 step needs one forward pass and one backward pass for the input
   gradient (the weights are frozen). The floor is exactly that, over the same minibatches in the same
   order, with nothing else: gather the batch, forward, cross-entropy, ∂/∂x. Ratio = Alg. 2 / floor
   (target ≤ 1.05; an attack that leaves the weights trainable pays ~1.3-1.4× here).
2. **iDeepFool (Alg. 1) vs. Alg. 2 at the same number of passes over the attack set**: wall time and the
   test accuracy each δ leaves (ε = 8, ℓ∞). iDeepFool runs batched DeepFool (one forward per iteration,
   one backward per candidate class, weights frozen); ξ = 1 so it does every pass. The paper reports
   Alg. 2 ≈ 13× faster than iDeepFool, and stronger.
3. **Evaluation throughput**: ``evaluate`` with a δ (clean + perturbed top-1/top-5, per class, fooling
   ratio) against two bare forward passes over the same images in the same batches (target ≥ 0.95).

Baseline and measured runs are interleaved (alternating which goes first) so that a busy machine slows
both alike; the table reports medians over ``--repeats``. Uses the zoo's trained
``cifar10_resnet20_natural`` when the manifest has it (accuracy figures need a trained model; timings
do not), else a freshly initialised ResNet-20, and says which.
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
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from uat_core.attacks import AttackConfig, IDeepFool, IDFConfig, UniversalAttack  # noqa: E402
from uat_core.constraints import apply  # noqa: E402
from uat_core.data import load_dataset  # noqa: E402
from uat_core.errors import UATError  # noqa: E402
from uat_core.evaluation import evaluate  # noqa: E402
from uat_core.models import frozen  # noqa: E402


# ---------------------------------------------------------------------------------------------
# the model and the data
# ---------------------------------------------------------------------------------------------

def load_model(device) -> tuple[torch.nn.Module, str]:
    """The zoo's natural ResNet-20 if present, else a fresh one; returns (model, a description)."""
    from uat_core import zoo
    entry = next((e for e in zoo.list_models("cifar10") if e["name"] == "cifar10_resnet20_natural"), None)
    if entry is not None and (zoo.ZOO_DIR / entry["file"]).is_file():
        model, _ = zoo.load_zoo_model(entry["name"], device=device)
        clean = entry.get("clean_top1")
        return model, "zoo cifar10_resnet20_natural" + (f" ({100 * clean:.1f}% clean)" if clean else "")
    from uat_core.data import dataset_info
    from uat_core.models import build_model
    info = dataset_info("cifar10")
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3, info["mean"], info["std"]).to(device).eval()
    return model, "fresh (untrained) ResNet-20: timings are valid, accuracy figures are not"


# ---------------------------------------------------------------------------------------------
# the measured runs and their floors
# ---------------------------------------------------------------------------------------------

def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_orders(n: int, epochs: int, seed: int, device) -> list[torch.Tensor]:
    """The shuffles Alg. 2 draws (same generator, same seed), so the floor sees the same minibatches."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=gen).to(device) for _ in range(epochs)]


def floor_run(model, x, y, epochs: int, batch_size: int, seed: int, device) -> float:
    """Seconds for: per minibatch, gather + forward + CE + input-gradient backward. Nothing else."""
    sync(device)
    t0 = time.perf_counter()
    with frozen(model):
        for order in batch_orders(len(x), epochs, seed, device):
            for b in range(0, len(x), batch_size):
                idx = order[b:b + batch_size]
                xb = x[idx].requires_grad_(True)                        # (B,C,H,W)
                loss = F.cross_entropy(model(xb), y[idx])
                torch.autograd.grad(loss, xb)
    sync(device)
    return time.perf_counter() - t0


def alg2_run(model, x, y, epochs: int, batch_size: int, seed: int, device, eps: float = 8.0):
    sync(device)
    t0 = time.perf_counter()
    run = UniversalAttack(model, x, y, AttackConfig(eps=eps, beta=9.0, optimizer="pgd", epochs=epochs,
                                                    batch_size=batch_size, seed=seed), device=device)
    res = run.run()
    sync(device)
    return time.perf_counter() - t0, res


def idf_run(model, x, y, passes: int, batch_size: int, seed: int, device, eps: float = 8.0):
    sync(device)
    t0 = time.perf_counter()
    run = IDeepFool(model, x, y, IDFConfig(eps=eps, norm="linf", xi=1.0, max_passes=passes,
                                           batch_size=batch_size, seed=seed), device=device)
    res = run.run()
    sync(device)
    return time.perf_counter() - t0, res, run.backwards


@torch.inference_mode()
def bare_forward(model, images_u8, delta, batch_size: int, device) -> float:
    """Two bare forward passes (clean, then x+δ) over pre-converted float batches."""
    batches = [images_u8[i:i + batch_size].to(device).float().div_(255) for i in range(0, len(images_u8), batch_size)]
    d = delta.to(device)
    was = model.training
    model.eval()
    sync(device)
    t0 = time.perf_counter()
    for xb in batches:
        model(xb)
    for xb in batches:
        model(apply(xb, d))
    sync(device)
    model.train(was)
    return time.perf_counter() - t0


def eval_run(model, images_u8, labels, delta, batch_size: int, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    evaluate(model, images_u8, labels, delta, 10, batch_size=batch_size, device=device)
    sync(device)
    return time.perf_counter() - t0


def interleaved(pairs: int, first, second) -> tuple[list, list]:
    """Run ``first`` and ``second`` ``pairs`` times each, alternating which goes first."""
    a, b = [], []
    for r in range(pairs):
        if r % 2 == 0:
            a.append(first())
            b.append(second())
        else:
            b.append(second())
            a.append(first())
    return a, b


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs"


def fmt_table(rows: list[tuple[str, ...]], header: tuple[str, ...], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data-root", default=None, help="CIFAR-10 copy (default: $UAT_DATA, else ../shared/data/cifar10-jpeg)")
    ap.add_argument("--images", type=int, default=2000, help="CIFAR-10 training images the attacks run on")
    ap.add_argument("--epochs", type=int, default=10, help="Alg. 2 epochs (passes over the images)")
    ap.add_argument("--batch-size", type=int, default=128, help="attack minibatch size")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each measurement (medians reported)")
    ap.add_argument("--idf-passes", type=int, default=1,
                    help="passes over the images for the iDeepFool vs Alg. 2 comparison (0 = skip it)")
    ap.add_argument("--idf-images", type=int, default=None, help="images for that comparison (default: --images)")
    ap.add_argument("--eval-images", type=int, default=2000, help="CIFAR-10 test images for accuracy and throughput")
    ap.add_argument("--eval-batch-size", type=int, default=500, help="evaluation batch size")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data subset and the batch order")
    ap.add_argument("--markdown", action="store_true", help="also print a section for docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    root = args.data_root or os.environ.get("UAT_DATA") or str(ROOT.parent / "shared/data/cifar10-jpeg")
    try:
        train = load_dataset("cifar10", "train", root, limit=args.images, seed=args.seed, progress=False)
        test = load_dataset("cifar10", "test", root, limit=args.eval_images, seed=args.seed, progress=False)
        model, model_desc = load_model(device)
    except UATError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    x = train.float_images().to(device)                                 # (N,3,32,32)
    y = train.labels.to(device)
    E, B, R = args.epochs, args.batch_size, args.repeats
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model: {model_desc}; {len(train)} train / {len(test)} test images; device {device}, "
          f"{torch.get_num_threads()} threads; load average {load0:.1f}", flush=True)

    # warm-up (allocator, kernels' first-call costs)
    floor_run(model, x[:2 * B], y[:2 * B], 1, B, args.seed, device)
    alg2_run(model, x[:2 * B], y[:2 * B], 1, B, args.seed, device)

    # 1. Alg. 2 vs. floor
    floors, alg2 = interleaved(R, lambda: floor_run(model, x, y, E, B, args.seed, device),
                               lambda: alg2_run(model, x, y, E, B, args.seed, device))
    t_floor, t_alg2 = statistics.median(floors), statistics.median(t for t, _ in alg2)
    pair_ratio = statistics.median(a[0] / f for f, a in zip(floors, alg2))
    steps = alg2[0][1].steps
    delta_alg2 = alg2[0][1].delta
    print(f"Alg. 2: {t_alg2:.2f} s, floor {t_floor:.2f} s -> ratio {t_alg2 / t_floor:.3f} "
          f"(median of per-pair ratios {pair_ratio:.3f})", flush=True)

    # 3. evaluation throughput (before iDeepFool, which is long)
    bares, evals = interleaved(R, lambda: bare_forward(model, test.images, delta_alg2, args.eval_batch_size, device),
                               lambda: eval_run(model, test.images, test.labels, delta_alg2, args.eval_batch_size,
                                                device))
    t_bare, t_eval = statistics.median(bares), statistics.median(evals)
    print(f"evaluate: {t_eval:.2f} s, two bare forwards {t_bare:.2f} s -> throughput ratio {t_bare / t_eval:.3f}",
          flush=True)
    m_alg2 = evaluate(model, test.images, test.labels, delta_alg2, 10, device=device)

    # 2. iDeepFool vs Alg. 2 at the same number of passes
    idf_row = None
    if args.idf_passes > 0:
        P = args.idf_passes
        n_idf = args.idf_images or len(train)
        xi_, yi_ = x[:n_idf], y[:n_idf]
        t_a2p, res_a2p = alg2_run(model, xi_, yi_, P, B, args.seed, device)
        t_idf, res_idf, backwards = idf_run(model, xi_, yi_, P, B, args.seed, device)
        m_a2p = evaluate(model, test.images, test.labels, res_a2p.delta, 10, device=device)
        m_idf = evaluate(model, test.images, test.labels, res_idf.delta, 10, device=device)
        idf_row = (P, n_idf, t_a2p, res_a2p.steps, m_a2p, t_idf, backwards, m_idf)
        print(f"{P} pass(es) over {n_idf} images: Alg. 2 {t_a2p:.1f} s ({res_a2p.steps} backward passes) -> "
              f"test top-1 {100 * m_a2p['perturbed_top1']:.1f}%; iDeepFool {t_idf:.1f} s ({backwards} backward "
              f"passes) -> {100 * m_idf['perturbed_top1']:.1f}%; iDeepFool/Alg. 2 time {t_idf / t_a2p:.1f}×",
              flush=True)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    rows = [
        ("floor: forward + input-gradient backward", f"{t_floor:.2f} s", f"{E} epochs × {steps // E} batches", "", ""),
        ("Alg. 2 (pgd, β = 9, ε = 8)", f"{t_alg2:.2f} s", f"{steps} steps",
         f"{t_alg2 / t_floor:.3f}× floor", "≤ 1.05"),
        ("two bare forward passes", f"{t_bare:.2f} s", f"{len(test)} images × 2", "", ""),
        ("evaluate(…, δ)", f"{t_eval:.2f} s", f"{2 * len(test) / t_eval:.0f} images/s",
         f"{t_bare / t_eval:.3f} of bare", "≥ 0.95"),
    ]
    if idf_row:
        P, n_idf, t_a2p, s_a2p, m_a2p, t_idf, bw, m_idf = idf_row
        rows += [
            (f"Alg. 2, {P} pass(es) over {n_idf} images", f"{t_a2p:.1f} s", f"{s_a2p} backward",
             f"test top-1 {100 * m_a2p['perturbed_top1']:.1f}%", ""),
            (f"iDeepFool, {P} pass(es) over {n_idf} images", f"{t_idf:.1f} s", f"{bw} backward",
             f"test top-1 {100 * m_idf['perturbed_top1']:.1f}%; {t_idf / t_a2p:.1f}× Alg. 2's time",
             "paper: ≈ 13×"),
        ]
    header = ("measure", "median time", "work", "result", "target")
    print()
    print(fmt_table(rows, header, markdown=False))
    print(f"\nclean test top-1 {100 * m_alg2['clean_top1']:.1f}% -> {100 * m_alg2['perturbed_top1']:.1f}% under the "
          f"{E}-epoch Alg. 2 δ ({len(test)} test images)")
    if args.markdown:
        cmd = "python bench/bench_attack.py " + " ".join(sys.argv[1:] if argv is None else argv)
        print("\n" + "-" * 80 + "\n")
        print("## Attack and evaluation\n")
        print(f"Command: `{cmd}`  ")
        print(f"Run {_dt.date.today().isoformat()} on {machine()}; device {device}, {torch.get_num_threads()} torch "
              f"threads, torch {torch.__version__}; load average {load0:.1f} at the start, {load1:.1f} at the end.  ")
        print(f"Model: {model_desc}. Attack set: {len(train)} CIFAR-10 training images, batch {B}; "
              f"medians of {R} interleaved runs.\n")
        print(fmt_table(rows, header, markdown=True))
        print(f"\nClean test top-1 {100 * m_alg2['clean_top1']:.1f}% → {100 * m_alg2['perturbed_top1']:.1f}% under "
              f"the {E}-epoch Alg. 2 δ ({len(test)} test images).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

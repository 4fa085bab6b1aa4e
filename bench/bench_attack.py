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


from uat_core.engine.attacks import AttackConfig, IDeepFool, IDFConfig, UniversalAttack
from uat_core.engine.constraints import apply
from uat_core.engine.data import load_dataset
from uat_core.engine.errors import UATError
from uat_core.engine.evaluation import evaluate
from uat_core.engine.models import frozen

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# the model and the data
# ---------------------------------------------------------------------------------------------

def load_model(device, checkpoint: str | None = None) -> tuple[torch.nn.Module, str]:
    """``checkpoint`` if given, else the zoo's natural ResNet-20 if present, else a fresh one.
    Returns (model, a description for the report)."""
    from uat_core import zoo
    if checkpoint:
        from uat_core.engine.checkpoint import load_checkpoint
        model, meta = load_checkpoint(checkpoint, {"num_classes": 10, "shape": (3, 32, 32)}, device)
        return model, f"{meta['arch']} from {checkpoint}"
    entry = next((e for e in zoo.list_models("cifar10") if e["name"] == "cifar10_resnet20_natural"), None)
    if entry is not None and (zoo.ZOO_DIR / entry["file"]).is_file():
        model, _ = zoo.load_zoo_model(entry["name"], device=device)
        clean = entry.get("clean_top1")
        return model, "zoo cifar10_resnet20_natural" + (f" ({100 * clean:.1f}% clean)" if clean else "")
    from uat_core.engine.data import dataset_info
    from uat_core.engine.models import build_model
    info = dataset_info("cifar10")
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3, info["mean"], info["std"]).to(device).eval()
    return model, "fresh (untrained) ResNet-20: timings are valid, accuracy figures are not"


# ---------------------------------------------------------------------------------------------
# the measured runs and their floors
# ---------------------------------------------------------------------------------------------

class Timing:
    """Wall-clock and CPU seconds of one run (CPU time = this process, all its threads).

    On a machine shared with other jobs the wall clock mostly measures the neighbours; the CPU time of
    a single-threaded run (``--threads 1``) is the work itself and stays within a few percent."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        sync(self.device)
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0
        return False


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_orders(n: int, epochs: int, seed: int, device) -> list[torch.Tensor]:
    """The shuffles Alg. 2 draws (same generator, same seed), so the floor sees the same minibatches."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=gen).to(device) for _ in range(epochs)]


def floor_run(model, x, y, epochs: int, batch_size: int, seed: int, device) -> Timing:
    """Per minibatch: gather + forward + CE + input-gradient backward (weights frozen). Nothing else."""
    orders = batch_orders(len(x), epochs, seed, device)
    with frozen(model), Timing(device) as t:
        for order in orders:
            for b in range(0, len(x), batch_size):
                idx = order[b:b + batch_size]
                xb = x[idx].requires_grad_(True)                        # (B,C,H,W)
                loss = F.cross_entropy(model(xb), y[idx])
                torch.autograd.grad(loss, xb)
    return t


def alg2_run(model, x, y, epochs: int, batch_size: int, seed: int, device, eps: float = 8.0):
    """(Timing, AttackResult) of Alg. 2 with the paper's settings (sign gradient, β = 9)."""
    with Timing(device) as t:
        run = UniversalAttack(model, x, y, AttackConfig(eps=eps, beta=9.0, optimizer="pgd", epochs=epochs,
                                                        batch_size=batch_size, seed=seed), device=device)
        res = run.run()
    return t, res


def idf_run(model, x, y, passes: int, batch_size: int, seed: int, device, eps: float = 8.0):
    """(Timing, AttackResult, backward passes) of iDeepFool doing every one of ``passes`` passes (ξ = 1)."""
    with Timing(device) as t:
        run = IDeepFool(model, x, y, IDFConfig(eps=eps, norm="linf", xi=1.0, max_passes=passes,
                                               batch_size=batch_size, seed=seed), device=device)
        res = run.run()
    return t, res, run.backwards


@torch.inference_mode()
def bare_forward(model, images_u8, delta, batch_size: int, device) -> Timing:
    """Two bare forward passes (clean, then x+δ) over pre-converted float batches."""
    batches = [images_u8[i:i + batch_size].to(device).float().div_(255) for i in range(0, len(images_u8), batch_size)]
    d = delta.to(device)
    was = model.training
    model.eval()
    with Timing(device) as t:
        for xb in batches:
            model(xb)
        for xb in batches:
            model(apply(xb, d))
    model.train(was)
    return t


def eval_run(model, images_u8, labels, delta, batch_size: int, device) -> Timing:
    with Timing(device) as t:
        evaluate(model, images_u8, labels, delta, 10, batch_size=batch_size, device=device)
    return t


def overhead_per_step(epochs: int, batch_size: int, seed: int, repeats: int) -> tuple[float, float]:
    """The engine's own cost per Alg. 2 step (x+δ, clamp, projection, history), in CPU ms, made visible
    by a model so cheap (one linear layer on CIFAR-sized images) that forward/backward hardly count.
    Returns (floor ms/step, Alg. 2 ms/step), medians."""
    device = torch.device("cpu")
    torch.manual_seed(seed)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    x = torch.rand(2000, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, 10, (2000,), generator=torch.Generator().manual_seed(seed))
    floors, alg2 = interleaved(repeats, lambda: floor_run(lin, x, y, epochs, batch_size, seed, device),
                               lambda: alg2_run(lin, x, y, epochs, batch_size, seed, device)[0])
    steps = epochs * -(-len(x) // batch_size)
    return (1000 * statistics.median(t.cpu for t in floors) / steps,
            1000 * statistics.median(t.cpu for t in alg2) / steps)


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


def med(ts: list[Timing], kind: str) -> float:
    return statistics.median(getattr(t, kind) for t in ts)


def spread(ts: list[Timing], kind: str) -> str:
    """'12.3 s (11.9–13.0)': the median and the range over the runs."""
    v = [getattr(t, kind) for t in ts]
    if len(v) == 1:
        return f"{v[0]:.2f} s"
    return f"{statistics.median(v):.2f} s ({min(v):.2f}–{max(v):.2f})"


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
    ap.add_argument("--data-root", default=None,
                    help="CIFAR-10 copy (default: $UAT_DATA, else ../shared/data/cifar10-jpeg)")
    ap.add_argument("--images", type=int, default=2000, help="CIFAR-10 training images the attacks run on")
    ap.add_argument("--epochs", type=int, default=10, help="Alg. 2 epochs (passes over the images)")
    ap.add_argument("--batch-size", type=int, default=128, help="attack minibatch size")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each measurement (medians reported)")
    ap.add_argument("--idf-passes", type=int, default=1,
                    help="passes over the images for the iDeepFool vs Alg. 2 comparison (0 = skip it)")
    ap.add_argument("--idf-images", type=int, default=None, help="images for that comparison (default: --images)")
    ap.add_argument("--eval-images", type=int, default=2000, help="CIFAR-10 test images for accuracy and throughput")
    ap.add_argument("--eval-batch-size", type=int, default=500, help="evaluation batch size")
    ap.add_argument("--checkpoint", default=None,
                    help="a CIFAR-10 model.pt to use (default: zoo cifar10_resnet20_natural, else a fresh ResNet-20)")
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
        model, model_desc = load_model(device, args.checkpoint)
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

    # 1. Alg. 2 vs. floor, same minibatches
    floors, runs = interleaved(R, lambda: floor_run(model, x, y, E, B, args.seed, device),
                               lambda: alg2_run(model, x, y, E, B, args.seed, device))
    alg2 = [t for t, _ in runs]
    steps, delta_alg2 = runs[0][1].steps, runs[0][1].delta
    r_wall, r_cpu = med(alg2, "wall") / med(floors, "wall"), med(alg2, "cpu") / med(floors, "cpu")
    print(f"Alg. 2 / floor: wall {r_wall:.3f}, CPU {r_cpu:.3f}", flush=True)

    # 3. evaluation throughput (before iDeepFool, which is long)
    bares, evals = interleaved(R, lambda: bare_forward(model, test.images, delta_alg2, args.eval_batch_size, device),
                               lambda: eval_run(model, test.images, test.labels, delta_alg2, args.eval_batch_size,
                                                device))
    e_wall, e_cpu = med(bares, "wall") / med(evals, "wall"), med(bares, "cpu") / med(evals, "cpu")
    print(f"evaluate throughput / bare forward: wall {e_wall:.3f}, CPU {e_cpu:.3f}", flush=True)
    m_alg2 = evaluate(model, test.images, test.labels, delta_alg2, 10, device=device)

    # engine bookkeeping per step, made visible with a trivial model
    ov = overhead_per_step(2, B, args.seed, R) if device.type == "cpu" else None
    if ov:
        print(f"engine overhead per step (linear model, CPU time): {ov[1] - ov[0]:.2f} ms", flush=True)

    # 2. iDeepFool vs Alg. 2 at the same number of passes
    idf = None
    if args.idf_passes > 0:
        P = args.idf_passes
        n_idf = min(args.idf_images or len(train), len(train))
        xs, ys = x[:n_idf], y[:n_idf]
        t_a, res_a = alg2_run(model, xs, ys, P, B, args.seed, device)
        t_i, res_i, backwards = idf_run(model, xs, ys, P, B, args.seed, device)
        m_a = evaluate(model, test.images, test.labels, res_a.delta, 10, device=device)
        m_i = evaluate(model, test.images, test.labels, res_i.delta, 10, device=device)
        idf = (P, n_idf, t_a, res_a.steps, m_a, t_i, backwards, m_i)
        print(f"{P} pass(es) over {n_idf} images: iDeepFool / Alg. 2 time: wall {t_i.wall / t_a.wall:.1f}×, "
              f"CPU {t_i.cpu / t_a.cpu:.1f}×; test top-1 left: Alg. 2 {100 * m_a['perturbed_top1']:.1f}%, "
              f"iDeepFool {100 * m_i['perturbed_top1']:.1f}%", flush=True)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    step_ms = 1000 * med(floors, "cpu") / steps
    rows = [
        ("floor: forward + input-gradient backward", spread(floors, "wall"), spread(floors, "cpu"),
         f"{E} epochs × {steps // E} batches", "", ""),
        ("Alg. 2 (pgd, β = 9, ε = 8)", spread(alg2, "wall"), spread(alg2, "cpu"), f"{steps} steps",
         f"**{r_wall:.3f}×** floor (CPU: **{r_cpu:.3f}×**)", "≤ 1.05"),
        ("two bare forward passes", spread(bares, "wall"), spread(bares, "cpu"), f"{len(test)} images × 2", "", ""),
        ("evaluate(…, δ)", spread(evals, "wall"), spread(evals, "cpu"),
         f"{2 * len(test) / med(evals, 'wall'):.0f} images/s",
         f"**{e_wall:.3f}** of bare throughput (CPU: **{e_cpu:.3f}**)", "≥ 0.95"),
    ]
    if ov:
        rows.append(("engine overhead per step (x+δ, clamp, projection, history), on a linear model", "",
                     f"{ov[1] - ov[0]:.2f} ms/step", f"{ov[1]:.2f} vs {ov[0]:.2f} ms/step",
                     f"{(ov[1] - ov[0]) / step_ms:.1%} of a ResNet-20 step", ""))
    if idf:
        P, n_idf, t_a, s_a, m_a, t_i, bw, m_i = idf
        rows += [
            (f"Alg. 2, {P} pass(es) over {n_idf} images", f"{t_a.wall:.1f} s", f"{t_a.cpu:.1f} s",
             f"{s_a} backward passes", f"test top-1 {100 * m_a['perturbed_top1']:.1f}%", ""),
            (f"iDeepFool, {P} pass(es) over {n_idf} images", f"{t_i.wall:.1f} s", f"{t_i.cpu:.1f} s",
             f"{bw} backward passes", f"test top-1 {100 * m_i['perturbed_top1']:.1f}%; "
             f"**{t_i.wall / t_a.wall:.1f}×** Alg. 2's time (CPU: **{t_i.cpu / t_a.cpu:.1f}×**)", "paper: ≈ 13×"),
        ]
    header = ("measure", "wall: median (range)", "CPU: median (range)", "work", "result", "target")
    summary = (f"Clean test top-1 {100 * m_alg2['clean_top1']:.1f}% → {100 * m_alg2['perturbed_top1']:.1f}% "
               f"under the {E}-epoch Alg. 2 δ ({len(test)} test images).")
    print()
    print(fmt_table([tuple(c.replace("**", "") for c in r) for r in rows], header, markdown=False))
    print("\n" + summary)
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
        print("\n" + summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Probes of the strong universal attack's search space on one CIFAR-10 zoo model (figures, not a timed test).

Issue 11 asks the strong attack to leave at most 55% of the natural ResNet-20 correct at ε = 8; it leaves
about 56.6%. These probes test, each with one number, whether a wider search would find a better basin:

    frequencies   every sign-of-cosine pattern sign(cos(2π(u·i + v·j)/H + φ)) at ±ε (grey: the same on every
                  channel; all integer frequencies (u, v) of the half-plane, 4 phases), screened on --probe attack
                  images; the best --keep by loss re-scored on all attack images beside the bank's best pattern
    channel-mix   greedy per-channel mixes of the bank's spatial patterns: from the best bank pattern, try every
                  spatial pattern of the bank (either sign) on one channel at a time, keep a change that lowers the
                  accuracy on --probe attack images; --sweeps sweeps over the channels
    refine        plain Alg. 2 (sign steps, cosine τ from ε/4) from the best bank pattern for each of --epochs
                  (e.g. 10,40) and --batch-sizes, scored on the attack images and on --test-size test images
    classes       the test images' per-class accuracy and the predicted-class counts under the best refined δ
    oracle        how low a δ these searches find can go at all: the strong attack (protocol settings) built on the
                  attack images, then the same attack built on the test images themselves, then its δ refined
                  further on the test images for --oracle-epochs at each --oracle-betas; an oracle no real attack
                  may use (it looks at the test images), so it bounds what better generalisation could give

    python bench/strong_search_probes.py --probes frequencies,channel-mix,refine,classes --markdown
    python bench/strong_search_probes.py --probes oracle --test-size 10000 --markdown

The attack images are the first --attack-size of a seeded subset of the training split (as bench_strong.py); the
test images are a seeded subset of the test split. No probe but the oracle looks at the test images to choose
anything.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch


from uat_core.engine.attacks.bank import pattern_bank, score_bank
from uat_core.engine.attacks.universal import AttackConfig, UniversalAttack
from uat_core.engine.data import load_dataset
from uat_core.engine.errors import UATError
from uat_core.engine.evaluation import predict

ROOT = Path(__file__).resolve().parents[1]

PROBES = ("frequencies", "channel-mix", "refine", "classes", "oracle")


def cosine_patterns(C: int, H: int, W: int, eps: float) -> tuple[torch.Tensor, list[str]]:
    """Grey sign-of-cosine patterns at every integer frequency of the half-plane and 4 phases: (M,C,H,W), names."""
    i = torch.arange(H, dtype=torch.float64)[:, None]
    j = torch.arange(W, dtype=torch.float64)[None, :]
    pats, names = [], []
    for u in range(0, H // 2 + 1):
        for v in range(-(W // 2) + 1, W // 2 + 1):
            if u == 0 and v <= 0:
                continue                                  # (−u, −v) is (u, v) with the phase negated
            for q in range(4):                            # φ = 0, π/4, π/2, 3π/4 (π more is the sign flip)
                b = torch.sign(torch.cos(2 * math.pi * (u * i / H + v * j / W) + q * math.pi / 4 + 1e-3))
                pats.append(b.float()[None].expand(C, H, W) * eps)
                names.append(f"cos u={u} v={v} φ={q}π/4")
    return torch.stack(pats), names


def best_bank(model, bank, x, y, probe_idx, keep: int = 8) -> tuple[int, float, float]:
    """The bank pattern that leaves the fewest attack images correct, of the best ``keep`` by loss on the probe:
    (its index, its accuracy and loss on all attack images)."""
    sc = score_bank(model, bank.patterns, x[probe_idx], y[probe_idx], beta=9.0, chunk=1024)
    top = sc.loss.argsort(descending=True)[:keep]
    full = score_bank(model, bank.patterns[top], x, y, beta=9.0, chunk=1024)
    k = int(full.acc.argmin())
    return int(top[k]), float(full.acc[k]), float(full.loss[k])


def oracle(model, train, test, eps: float, betas: list[float], epochs: int) -> list[str]:
    """The oracle probe's markdown lines: the strong attack built on the attack images, the same attack built
    on the test images, and that δ refined further on the test images at each β (all scored on the test images)."""
    from uat_core.recipes import protocol
    rows = []

    def row(what: str, built_on: str, d: torch.Tensor, sec: float) -> None:
        s = score_bank(model, d[None], test.images, test.labels, beta=9.0)
        rows.append(f"| {what} | {built_on} | **{100 * float(s.acc[0]):.1f}** | {sec:.0f} |")
        print(rows[-1], flush=True)
    for data, built_on in ((train, f"{len(train)} training images (the real attack)"),
                           (test, f"the {len(test)} test images (oracle)")):
        t = time.perf_counter()
        r = protocol.attack_run(model, data, "strong", eps, protocol.EPOCHS).run()
        row(f"strong attack, protocol settings (winning start `{r.config['start']}`)", built_on, r.delta.cpu(),
            time.perf_counter() - t)
    for beta in betas:
        t = time.perf_counter()
        cfg = AttackConfig(eps=eps, beta=beta, optimizer="pgd", step_size=eps / 4, schedule="cosine", epochs=epochs,
                           batch_size=128, seed=0, snapshot_every=0)
        d = UniversalAttack(model, test.images, test.labels, cfg, delta_init=r.delta).run().delta.cpu()
        row(f"the oracle's δ refined {epochs} more epochs at β = {beta:g}", "the test images (oracle)", d,
            time.perf_counter() - t)
    return ["", f"- **oracle**: how low these searches can take this model at all, every δ scored on the same "
                f"{len(test)} test images:", "",
            "| δ | built on | test images correct (%) | time (s) |", "|---|---|---:|---:|", *rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    ap.add_argument("--model", default="natural", help="CIFAR-10 zoo algorithm (default natural)")
    ap.add_argument("--probes", default=",".join(PROBES), help=f"comma-separated, of: {', '.join(PROBES)}")
    ap.add_argument("--attack-size", type=int, default=2000, help="training images the probes attack")
    ap.add_argument("--test-size", type=int, default=2000, help="test images the refined δs are scored on")
    ap.add_argument("--probe", type=int, default=64, help="attack images of the frequency screen and the mixes")
    ap.add_argument("--keep", type=int, default=16, help="frequencies re-scored on all attack images")
    ap.add_argument("--sweeps", type=int, default=2, help="channel-mix sweeps over the channels")
    ap.add_argument("--epochs", default="10,40", help="comma-separated Alg. 2 epochs for the refine probe")
    ap.add_argument("--batch-sizes", default="128,32", help="comma-separated batch sizes for the refine probe "
                                                              "(the first one with every --epochs, the rest at "
                                                              "the first --epochs)")
    ap.add_argument("--oracle-betas", default="9,2,1", help="comma-separated β of the oracle's refinements "
                                                              "on the test images")
    ap.add_argument("--oracle-epochs", type=int, default=5, help="Alg. 2 epochs of each oracle refinement")
    ap.add_argument("--eps", type=float, default=8.0, help="ε in 0-255 units")
    ap.add_argument("--markdown", action="store_true", help="print markdown lines for docs/benchmarks.md")
    args = ap.parse_args(argv)
    try:
        probes = [p.strip() for p in args.probes.split(",") if p.strip()]
        bad = [p for p in probes if p not in PROBES]
        if bad or not probes:
            raise UATError(f"unknown probe '{','.join(bad) or '(none)'}': choose from {', '.join(PROBES)}")
        epochs = [int(e) for e in args.epochs.split(",") if e.strip()]
        betas = [float(v) for v in args.oracle_betas.split(",") if v.strip()]
        if not betas or not all(0 < v < float("inf") for v in betas):
            raise UATError(f"--oracle-betas must be positive numbers, got '{args.oracle_betas}'")
        sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        for name, v in (("attack-size", args.attack_size), ("test-size", args.test_size), ("probe", args.probe),
                        ("keep", args.keep), ("sweeps", args.sweeps), ("oracle-epochs", args.oracle_epochs),
                        *(("epochs", e) for e in epochs),
                        *(("batch-sizes", b) for b in sizes)):
            if v < 1:
                raise UATError(f"--{name} must be at least 1, got {v}")
        if not epochs or not sizes:
            raise UATError("--epochs and --batch-sizes need at least one value each")
        from uat_core.zoo import load_zoo_model, zoo_name
        train = load_dataset("cifar10", "train", args.data_root, limit=args.attack_size, seed=0, progress=False)
        test = load_dataset("cifar10", "test", args.data_root, limit=args.test_size, seed=0, progress=False)
        model, _ = load_zoo_model(zoo_name("cifar10", args.model))
    except (UATError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.eval()
    eps = args.eps / 255
    x, y = train.images, train.labels
    shape = tuple(x.shape[1:])
    bank = pattern_bank(shape, eps, random=0)
    g = torch.Generator().manual_seed(1)
    probe_idx = torch.randperm(len(x), generator=g)[:args.probe]
    t0 = time.perf_counter()
    b, ref_acc, ref_loss = best_bank(model, bank, x, y, probe_idx)
    lines = [f"Model `cifar10_resnet20_{args.model}`, ε = {args.eps:g}, {len(x)} attack images, {len(test.labels)} "
             f"test images. Best bank pattern on the attack images: `{bank.names[b]}` "
             f"({100 * ref_acc:.1f}% of them correct, loss {ref_loss:.3f}).", ""]
    print(lines[0], flush=True)

    def say(line: str) -> None:                      # one probe's figure: printed now, kept for --markdown
        lines.append(line)
        print(line, flush=True)
    refined = None
    if "frequencies" in probes:
        P, names = cosine_patterns(*shape, eps)
        t = time.perf_counter()
        sc = score_bank(model, P, x[probe_idx], y[probe_idx], beta=9.0, chunk=1024)
        top = sc.loss.argsort(descending=True)[:args.keep]
        full = score_bank(model, P[top], x, y, beta=9.0, chunk=1024)
        k = int(full.acc.argmin())
        line = (f"- **frequencies**: {len(P)} grey sign-of-cosine patterns screened on {len(probe_idx)} attack images, "
                f"the best {len(top)} by loss re-scored on all {len(x)}: the best, `{names[int(top[k])]}`, leaves "
                f"**{100 * float(full.acc[k]):.1f}%** of them correct (loss {float(full.loss[k]):.3f}) against "
                f"{100 * ref_acc:.1f}% for `{bank.names[b]}` ({time.perf_counter() - t:.0f} s).")
        say(line)
    if "channel-mix" in probes:
        t = time.perf_counter()
        spatial = torch.stack([p[0] for n, p in zip(bank.names, bank.patterns) if n.endswith("c=" + "+" * shape[0])])
        opts = torch.cat([spatial, -spatial])                                         # (2N,H,W) at ±ε
        xs, ys = x[probe_idx], y[probe_idx]
        cur = bank.patterns[b].clone()
        cur_acc = float(score_bank(model, cur[None], xs, ys, beta=9.0).acc[0])
        start_acc, changes = cur_acc, 0
        for _ in range(args.sweeps):
            for c in range(shape[0]):
                cands = cur[None].repeat(len(opts), 1, 1, 1)
                cands[:, c] = opts
                s = score_bank(model, cands, xs, ys, beta=9.0, chunk=1024)
                k = int(s.acc.argmin())
                if float(s.acc[k]) < cur_acc:
                    cur, cur_acc, changes = cands[k].clone(), float(s.acc[k]), changes + 1
        full = score_bank(model, cur[None], x, y, beta=9.0)
        line = (f"- **channel-mix**: {args.sweeps} greedy sweeps over the {shape[0]} channels, {len(opts)} options "
                f"each, on {len(probe_idx)} attack images: {changes} change(s) kept ({100 * start_acc:.1f}% → "
                f"{100 * cur_acc:.1f}% on them); the mix leaves **{100 * float(full.acc[0]):.1f}%** of all "
                f"{len(x)} attack images correct ({time.perf_counter() - t:.0f} s).")
        say(line)
    if "refine" in probes or "classes" in probes:
        runs = [(e, sizes[0]) for e in epochs] + [(epochs[0], bs) for bs in sizes[1:]]
        if "refine" not in probes:
            runs = runs[:1]
        start_test = score_bank(model, bank.patterns[b:b + 1], test.images, test.labels, beta=9.0)
        rows = []
        for E, bs in runs:
            t = time.perf_counter()
            cfg = AttackConfig(eps=args.eps, beta=9.0, optimizer="pgd", step_size=args.eps / 4, schedule="cosine",
                               epochs=E, batch_size=bs, seed=0, snapshot_every=0)
            r = UniversalAttack(model, x, y, cfg, delta_init=bank.patterns[b]).run()
            d = r.delta.cpu()
            a = score_bank(model, d[None], x, y, beta=9.0)
            s = score_bank(model, d[None], test.images, test.labels, beta=9.0)
            rows.append((E, bs, float(a.acc[0]), float(s.acc[0]), time.perf_counter() - t))
            if refined is None or float(a.acc[0]) < refined[1]:
                refined = (d, float(a.acc[0]))
            print(f"refine E={E} batch={bs}: attack {100 * float(a.acc[0]):.1f}%, test {100 * float(s.acc[0]):.1f}%",
                  flush=True)
        if "refine" in probes:
            lines += ["", f"- **refine** from `{bank.names[b]}` (test: {100 * float(start_test.acc[0]):.1f}% "
                          "before refinement):", "",
                      "| epochs | batch | attack images correct (%) | test images correct (%) | time (s) |",
                      "|---:|---:|---:|---:|---:|"]
            lines += [f"| {E} | {bs} | {100 * a:.1f} | **{100 * s:.1f}** | {sec:.0f} |" for E, bs, a, s, sec in rows]
    if "classes" in probes and refined is not None:
        top, _ = predict(model, test.images, refined[0], topk=1)
        p, yt = top[:, 0], test.labels
        classes = test.classes
        counts = torch.bincount(p, minlength=len(classes)).tolist()
        acc = [float((p[yt == c] == c).float().mean()) if (yt == c).any() else float("nan")
               for c in range(len(classes))]
        lines += ["", "- **classes** under the refined δ with the fewest attack images correct (test images):", "",
                  "| class | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes),
                  "| predicted as (images) | " + " | ".join(str(c) for c in counts) + " |",
                  "| correct (%) | " + " | ".join(f"{100 * a:.0f}" for a in acc) + " |"]
    if "oracle" in probes:
        lines += oracle(model, train, test, args.eps, betas, args.oracle_epochs)
    lines += ["", f"Probes took {time.perf_counter() - t0:.0f} s on {os.cpu_count()} logical CPUs, "
                  f"{torch.get_num_threads()} torch threads, torch {torch.__version__}."]
    if args.markdown:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

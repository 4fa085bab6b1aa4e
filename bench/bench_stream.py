"""Benchmark of streamed image folders and of torchrun attacks, on a synthetic ImageNet-like folder.

    python bench/bench_stream.py                         # 20,000 JPEGs of 256² in 100 classes (the record)
    python bench/bench_stream.py --markdown              # the same, printed as a docs/benchmarks.md section
    python bench/bench_stream.py --images 200 --classes 4 --side 48 --image-size 32 --attack-size 64 \\
        --eval-size 64 --repeats 1 --stream on           # a smoke run in about a minute

The script first builds the folder (``--folder``, default under the temporary directory; reused when it is
already there): ``train/<class>/<i>.jpg``, ``--images`` smooth random JPEGs of ``--side``² in ``--classes``
classes, and ``val`` as a link to ``train``. At the defaults its decoded copy at 224² is 20,000 × 3 × 224² B
= 2.9 GB, above ``--stream-threshold`` (2 GB): ``--stream auto`` streams it, as it would stream ImageNet.
Then, on this machine, in one run:

1. **Peak memory** of ``uat eval`` (a δ over the whole val split) and of a one-epoch ``uat train`` (natural,
   then the clean evaluation of the val split) at each minibatch of ``--train-batch`` over the folder, each
   beside a bare PyTorch training loop of the same model and minibatch on random tensors (no data: what
   training itself holds at that minibatch), each a subprocess (the commands with ``--stream auto``):
   the proportional set size (PSS: shared pages split between the processes that share them) of the
   command and its decoding processes together, sampled every 0.2 s, its peak; beside it the same sum of
   resident sizes (RSS, which counts the pages the forked workers share with their parent once per
   process) and the main process's own peak RSS. Target: under 2 GB.
2. **Streaming evaluation throughput**: ``evaluation.evaluate_stream`` (clean accuracy; the engine's decode,
   resize and center crop in ``--workers`` processes, minibatches of ``stream.EVAL_BATCH``) against a bare
   ``DataLoader`` over the same files with the same decoder and the same workers and minibatches, and a forward
   pass of the same model (torchvision ``resnet18``, random weights, ``--model``), nothing else. Images per
   second, runs interleaved (``--repeats``), medians. Target: the stream at least 0.9× the bare loop.
3. **torchrun attack on the CPU**: ``uat attack`` (Alg. 2, ε = 10) on ``--attack-size`` training images with
   one process (minibatch 2B, all threads) and under ``torchrun --nproc_per_node=2`` (minibatch B per process,
   half the threads each): wall time of each command (starting the processes, decoding the attack set, Alg. 2,
   the fixed-pattern baseline, scoring ``--eval-size`` test images), the seconds of Alg. 2 alone, and whether
   the δs agree:
   the share of entries that differ by more than 1/255 (a sign step may flip where a gradient is near zero)
   and the largest difference, and the test figures of both.

Nothing here needs a GPU (``--device`` is the CPU). The smoke run above checks the script, not the targets:
at that size the folder is tiny and the fixed costs (starting processes, building the model) dominate.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench_attack import machine          # the same machine line as the other benchmarks (bench/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]

MEMORY_TARGET_GB = 2.0
THROUGHPUT_TARGET = 0.9


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default=None,
                    help="where the synthetic folder is built (default: <tmp>/uat_bench_stream_<images>_<classes>_"
                         "<side>; reused when present)")
    ap.add_argument("--images", type=int, default=20_000, help="JPEGs in the folder")
    ap.add_argument("--classes", type=int, default=100, help="class folders")
    ap.add_argument("--side", type=int, default=256, help="side of each JPEG in pixels")
    ap.add_argument("--image-size", type=int, default=224, help="--image-size of every command (the crop)")
    ap.add_argument("--model", default="torchvision:resnet18", help="architecture, random weights")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: the stream's default)")
    ap.add_argument("--stream", default="auto",
                    help="--stream of the commands: auto (the default: streams a folder above 2 GB decoded) | on "
                         "(a small smoke-run folder streamed all the same)")
    ap.add_argument("--repeats", type=int, default=2, help="throughput runs of each loop (interleaved)")
    ap.add_argument("--throughput-images", type=int, default=None,
                    help="images of the throughput runs (default: the whole folder)")
    ap.add_argument("--train-batch", default="32,64",
                    help="minibatches of the one-epoch training runs, comma-separated: one run (and one bare "
                         "training loop beside it) for each")
    ap.add_argument("--attack-size", type=int, default=512, help="training images of the torchrun attack")
    ap.add_argument("--attack-epochs", type=int, default=2, help="epochs of the torchrun attack")
    ap.add_argument("--attack-batch", type=int, default=32,
                    help="attack minibatch per process of the 2-process run (one process: twice this)")
    ap.add_argument("--eval-size", type=int, default=1000, help="test images the attack commands score")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the attack runs in all (one process: all of them; two: half each; "
                         "default: the CPU count)")
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to skip: memory, throughput, torchrun; or, of the memory part, eval, "
                         "train (its training runs and their bare loops)")
    ap.add_argument("--keep", action="store_true", help="keep the runs' output folders (printed)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown section for docs/benchmarks.md")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# the folder
# ---------------------------------------------------------------------------------------------

def _write_class(args_tuple) -> int:
    folder, c, first, count, side, seed = args_tuple
    from PIL import Image
    rng = np.random.default_rng([seed, c])
    out = Path(folder) / f"c{c:04d}"
    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = rng.uniform(40, 200, 3)
    for i in range(first, first + count):
        # a smooth colour field (JPEG-sized like a photo, ~15-30 KB at 256²) with some noise
        f1, f2 = rng.uniform(1, 6, 2)
        ph = rng.uniform(0, 6.3, 3)
        img = np.stack([base[k] + 50 * np.sin(f1 * 6.3 * xx + ph[k]) * np.cos(f2 * 6.3 * yy) for k in range(3)], -1)
        img += rng.normal(0, 6, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out / f"{i:06d}.jpg", quality=90)
    return count


def build_folder(args) -> Path:
    folder = Path(args.folder or Path(tempfile.gettempdir()) /
                  f"uat_bench_stream_{args.images}_{args.classes}_{args.side}")
    done = folder / ".complete"
    if done.is_file():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    train = folder / "train"
    per = [args.images // args.classes + (c < args.images % args.classes) for c in range(args.classes)]
    jobs = [(str(train), c, 0, n, args.side, 0) for c, n in enumerate(per)]
    t0 = time.perf_counter()
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        total = sum(pool.map(_write_class, jobs))
    (folder / "val").symlink_to("train", target_is_directory=True)        # the same files as the test split
    done.write_text(f"{total}\n")
    size = sum(f.stat().st_size for f in train.rglob("*.jpg"))
    print(f"built {folder}: {total} JPEGs of {args.side}² in {args.classes} classes, {size / 2 ** 20:.0f} MB on disk, "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return folder


# ---------------------------------------------------------------------------------------------
# memory of a process tree
# ---------------------------------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _kb(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; its wall time and the peaks of its process tree's PSS and RSS (sums) and of its own RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"pss": 0, "rss": 0, "main": 0, "procs": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            pids = _tree(proc.pid)
            pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
            rss = sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids)
            peak.update(pss=max(peak["pss"], pss), rss=max(peak["rss"], rss), procs=max(peak["procs"], len(pids)),
                        main=max(peak["main"], _kb(f"/proc/{proc.pid}/status", "VmHWM:")))
            stop.wait(0.2)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return {"seconds": time.perf_counter() - t0, "pss_gb": peak["pss"] / 2 ** 20, "rss_gb": peak["rss"] / 2 ** 20,
            "main_gb": peak["main"] / 2 ** 20, "procs": peak["procs"], "stdout": out.strip()}


# ---------------------------------------------------------------------------------------------
# the parts
# ---------------------------------------------------------------------------------------------

def make_checkpoint(args, folder: Path, where: Path) -> Path:
    from uat_core.engine.checkpoint import model_meta, save_checkpoint
    from uat_core.engine.data import dataset_info
    from uat_core.engine.models import build_model
    info = dataset_info(f"imagefolder:{folder}", args.image_size)
    torch.manual_seed(0)
    model = build_model(args.model, info["num_classes"], 3, info["mean"], info["std"])
    path = where / "model.pt"
    save_checkpoint(path, model, model_meta(args.model, f"imagefolder:{folder}", info["classes"], 3, args.image_size,
                                            info["mean"], info["std"]))
    return path


def part_memory(args, folder: Path, ckpt: Path, runs: Path, skip: set[str]) -> list[dict]:
    S = args.image_size
    delta = runs / "delta.pt"
    torch.save((torch.rand(3, S, S, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 10 / 255, delta)
    workers = [] if args.workers is None else ["--workers", str(args.workers)]
    data = ["--dataset", f"imagefolder:{folder}", "--image-size", str(S), "--stream", args.stream, *workers, "--quiet",
            "--device", "cpu"]
    rows = [] if "eval" in skip else [
        _measure_command("eval", ["eval", *data, "--checkpoint", str(ckpt), "--perturbation", str(delta),
                                  "--out", str(runs / "eval"), "--force"], runs / "eval")]
    for b in [] if "train" in skip else _batches(args.train_batch):
        out = runs / f"train{b}"
        rows.append(_measure_command(f"train (1 epoch, minibatch {b})", [
            "train", *data, "--model", args.model, "--epochs", "1", "--batch-size", str(b), "--no-report",
            "--out", str(out), "--force"], out))
        # the baseline in the same table: the same model and minibatch trained on random tensors, no data at all
        argv = [str(args.model), str(S), str(b), str(args.classes), str(BARE_STEPS)]
        r = run_measured([sys.executable, "-c", BARE_LOOP, *argv], dict(os.environ))
        rows.append({"command": f"{BARE} (minibatch {b})", "bare": True, **r, "streamed": "no data",
                     "argv": "python -c BARE_LOOP " + " ".join(argv)})
        print(f"{BARE}, minibatch {b}: peak PSS {r['pss_gb']:.2f} GB (main {r['main_gb']:.2f} GB)", file=sys.stderr)
    return rows


def _batches(text: str) -> list[int]:
    try:
        out = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise SystemExit(f"--train-batch: minibatch sizes separated by commas, got {text!r}") from None
    if not out or min(out) < 1:
        raise SystemExit(f"--train-batch: positive minibatch sizes, got {text!r}")
    return out


def _measure_command(name: str, argv: list[str], out: Path) -> dict:
    """One ``uat`` command, measured (run_measured), with whether it streamed (from its metrics.json)."""
    r = run_measured([sys.executable, "-m", "uat_core", *argv], dict(os.environ))
    m = json.loads((out / "metrics.json").read_text())
    streamed = m["streamed"] if argv[0] == "eval" else m.get("streamed", {}).get("train", False)
    print(f"{name}: peak PSS {r['pss_gb']:.2f} GB (RSS sum {r['rss_gb']:.2f} GB, main {r['main_gb']:.2f} GB, "
          f"{r['procs']} processes), {r['seconds']:.0f} s, streamed {streamed}", file=sys.stderr)
    return {"command": name, **r, "streamed": streamed, "argv": "uat " + " ".join(argv)}


BARE = "bare training loop"
BARE_STEPS = 20
# a plain PyTorch training loop of the same model at the same image size and minibatch, on random tensors: what
# the training itself holds, whatever the data path (argv: model, image size, minibatch, classes, steps)
BARE_LOOP = """
import sys, torch
from uat_core.engine.models import build_model
name, (S, B, K, steps) = sys.argv[1], map(int, sys.argv[2:6])
torch.manual_seed(0)
model = build_model(name, K, 3, (0.5,) * 3, (0.25,) * 3)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
for _ in range(steps):
    x, y = torch.rand(B, 3, S, S), torch.randint(0, K, (B,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
"""


def part_throughput(args, folder: Path) -> dict:
    from torch.utils.data import DataLoader, Dataset

    from uat_core.engine.data import decode_file, fit_image
    from uat_core.engine.evaluation import evaluate_stream
    from uat_core.engine.stream import EVAL_BATCH, _preload, default_workers, open_split
    from uat_core.engine.models import build_model
    from uat_core.engine.data import dataset_info

    S = args.image_size
    workers = default_workers() if args.workers is None else args.workers
    stream = open_split(f"imagefolder:{folder}", "test", S, mode="on", workers=workers, note=False)
    stream = stream.select(args.throughput_images, seed=0).check()
    info = dataset_info(f"imagefolder:{folder}", S)
    torch.manual_seed(0)
    model = build_model(args.model, info["num_classes"], 3, info["mean"], info["std"]).eval()
    files = [stream.path(i) for i in range(len(stream))]
    labels = stream.labels

    class Bare(Dataset):                      # the same files, decoder and view; nothing else
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return fit_image(decode_file(files[i]), S), labels[i]

    def bare() -> int:
        n = 0
        loader = DataLoader(Bare(), batch_size=EVAL_BATCH, num_workers=workers)
        with torch.inference_mode():
            for x, _ in loader:
                model(x.float().div_(255))
                n += len(x)
        return n

    def streamed() -> int:
        return evaluate_stream(model, stream, None, info["num_classes"])["n"]

    _preload()                                # both loops fork workers that have the decoders imported already
    with torch.inference_mode():              # and the model is warm: neither run pays a first-call cost
        model(torch.rand(8, 3, S, S))

    speeds = {"bare": [], "stream": []}
    for r in range(args.repeats):
        for name in (("bare", "stream") if r % 2 == 0 else ("stream", "bare")):
            t0 = time.perf_counter()
            n = bare() if name == "bare" else streamed()
            speeds[name].append(n / (time.perf_counter() - t0))
            print(f"throughput {name} run {r + 1}: {speeds[name][-1]:.1f} images/s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in speeds.items()}
    return {"images": len(stream), "workers": workers, "batch": EVAL_BATCH, "threads": torch.get_num_threads(),
            **{f"{k}_ips": v for k, v in med.items()}, "runs": speeds, "ratio": med["stream"] / med["bare"]}


def part_torchrun(args, folder: Path, ckpt: Path, runs: Path) -> dict:
    cores = args.threads or os.cpu_count() or 1
    workers = [] if args.workers is None else ["--workers", str(args.workers)]
    common = ["attack", "--dataset", f"imagefolder:{folder}", "--checkpoint", str(ckpt), "--eps", "10",
              "--attack-size", str(args.attack_size), "--epochs", str(args.attack_epochs), "--eval-size",
              str(args.eval_size), "--stream", args.stream, *workers, "--device", "cpu", "--quiet", "--force"]
    res = {}
    for n in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n))}
        argv = [*common, "--batch-size", str(args.attack_batch * (2 // n)), "--out", str(runs / f"attack{n}")]
        pre = [sys.executable, "-m", "uat_core"] if n == 1 else [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}", "-m", "uat_core"]
        r = run_measured(pre + argv, env)
        m = json.loads((runs / f"attack{n}" / "metrics.json").read_text())
        res[n] = {"wall": r["seconds"], "attack_seconds": m["seconds"], "perturbed_top1": m["perturbed_top1"],
                  "threads": env["OMP_NUM_THREADS"],
                  "clean_top1": m["clean_top1"], "argv": ("uat " if n == 1 else f"torchrun --nproc_per_node={n} "
                                                          "-m uat_core ") + " ".join(argv)}
        print(f"attack, {n} process(es): {r['seconds']:.1f} s wall, attack {m['seconds']:.1f} s, perturbed top-1 "
              f"{100 * m['perturbed_top1']:.1f}%", file=sys.stderr)
    d1, d2 = (torch.load(runs / f"attack{n}" / "perturbation.pt") for n in (1, 2))
    diff = (d1 - d2).abs()
    return {**res, "share_over_1": float((diff > 1 / 255 + 1e-7).float().mean()), "max_diff": float(diff.max()) * 255}


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(args, folder, runs, mem, thr, tr, load0, md: bool) -> str:
    decoded_gb = args.images * 3 * args.image_size ** 2 / 2 ** 30
    lines = ["## Streamed folders and torchrun attacks" if md else "Streamed folders and torchrun attacks", "",
             f"Command: `python bench/bench_stream.py {' '.join(sys.argv[1:])}`  ",
             f"Run {_dt.date.today().isoformat()} on {machine()}, torch {torch.__version__}; load average "
             f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.  ",
             f"Folder: {args.images} JPEGs of {args.side}² in {args.classes} classes (`FOLDER` below), "
             f"{decoded_gb:.1f} GB decoded at {args.image_size}²; model {args.model} (random weights).", ""]
    if mem:
        lines += ["| command | peak PSS (all processes) | peak RSS sum | main process peak RSS | processes | streamed "
                  "| wall | target |", "|---|---|---|---|---|---|---|---|"]
        for r in mem:
            target = "— (the baseline)" if r.get("bare") else \
                f"< {MEMORY_TARGET_GB:g} GB " + ("✓" if r["pss_gb"] < MEMORY_TARGET_GB else "✗")
            lines.append(f"| `{r['command']}` | {r['pss_gb']:.2f} GB | {r['rss_gb']:.2f} GB | {r['main_gb']:.2f} GB | "
                         f"{r['procs']} | {r['streamed']} | {r['seconds']:.0f} s | {target} |")
        lines += [""] + [f"* `{r['argv']}`" for r in mem] + [""]
    if thr:
        ok = "✓" if thr["ratio"] >= THROUGHPUT_TARGET else "✗"
        lines += ["| loop | images/s (median of runs) |", "|---|---|",
                  f"| bare DataLoader + forward | {thr['bare_ips']:.1f} |",
                  f"| `evaluate_stream` | {thr['stream_ips']:.1f} |",
                  f"| ratio (target ≥ {THROUGHPUT_TARGET}) | {thr['ratio']:.3f} {ok} |", "",
                  f"{thr['images']} images, {thr['workers']} decoding processes, minibatches of {thr['batch']}, "
                  f"{thr['threads']} torch threads; runs: " + "; ".join(
                      f"{k} " + ", ".join(f"{v:.1f}" for v in vs) for k, vs in thr["runs"].items()), ""]
    if tr:
        lines += ["| attack | threads per process | wall | Alg. 2 alone | clean top-1 | perturbed top-1 |",
                  "|---|---|---|---|---|---|"]
        for n in (1, 2):
            lines.append(f"| {n} process{'es' if n > 1 else ''} | {tr[n]['threads']} | {tr[n]['wall']:.1f} s | "
                         f"{tr[n]['attack_seconds']:.1f} s | {100 * tr[n]['clean_top1']:.1f}% | "
                         f"{100 * tr[n]['perturbed_top1']:.1f}% |")
        lines += ["", f"δ of 2 processes against 1: {100 * tr['share_over_1']:.3f}% of the entries differ by more "
                  f"than 1/255 (largest difference {tr['max_diff']:.3g}/255).", ""]
        lines += [f"* `{tr[n]['argv']}`" for n in (1, 2)]
    # the folders are this machine's temporary paths: the record names them FOLDER and RUNS
    return "\n".join(lines).replace(str(folder), "FOLDER").replace(str(runs), "RUNS")


def main(argv=None) -> int:
    args = parse(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    load0 = os.getloadavg()[0]
    folder = build_folder(args)
    runs = Path(tempfile.mkdtemp(prefix="uat_bench_stream_runs_"))
    try:
        ckpt = make_checkpoint(args, folder, runs)
        mem = part_memory(args, folder, ckpt, runs, skip) if "memory" not in skip else None
        thr = part_throughput(args, folder) if "throughput" not in skip else None
        tr = part_torchrun(args, folder, ckpt, runs) if "torchrun" not in skip else None
        print(report(args, folder, runs, mem, thr, tr, load0, args.markdown))
    finally:
        if args.keep:
            print(f"outputs kept in {runs}", file=sys.stderr)
        else:
            shutil.rmtree(runs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

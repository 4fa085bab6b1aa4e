"""Multi-process universal adversarial training: ``torchrun -m uat_core train`` with DDP on CPU (gloo).

Two processes on the digits data: δ and the weights must be identical on both ranks, only rank 0 writes,
and the run must be close to a one-process run over the same global batches (BatchNorm sees per-rank
batches under DDP, so "close", not equal).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from uat_core.engine.checkpoint import load_checkpoint
from uat_core.recipes.pipeline import make_trainer, new_model
from uat_core.engine.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def test_global_batch_is_the_union_of_the_rank_blocks(digits_train):
    """Rank r of W takes the r-th block of B in global batch i, so a one-process run with batch B·W sees
    exactly the same global batches (and the same images per step) as W processes with batch B."""
    train = digits_train.subset(300, 0)
    one = make_trainer("smallcnn", train, TrainConfig(batch_size=60, augment=False))
    ranks = []
    for r in range(3):
        t = make_trainer("smallcnn", train, TrainConfig(batch_size=20, augment=False))
        t.rank, t.world = r, 3                                # as under torchrun, without a process group
        ranks.append(t)
    for epoch in range(2):
        order = one._order(epoch)
        seen = []
        for i in range(one.steps_per_epoch):                  # 300 // 60 = 5
            x1, y1, _ = one._batch(order, epoch, i)
            blocks = [t._batch(order, epoch, i) for t in ranks]
            assert torch.equal(torch.cat([b[1] for b in blocks]), y1)
            assert torch.equal(torch.cat([b[0] for b in blocks]), x1)
            seen.append(y1)
        assert len(torch.cat(seen)) == 300                    # every image once per epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COMMON = ["--dataset", "digits", "--model", "smallcnn", "--algorithm", "uat", "--eps", "32", "--delta-rule", "sgd",
          "--delta-lr", "1000", "--epochs", "2", "--train-size", "256", "--lr", "0.1", "--schedule", "onecycle",
          "--no-report", "--eval-size", "100", "--quiet", "--seed", "0"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@needs_gloo
def test_torchrun_two_processes_match_each_other_and_one_process(tmp_path, digits_train):
    two, one = tmp_path / "two", tmp_path / "one"
    p = _run(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
              f"--master_port={_free_port()}", "-m", "uat_core", "train", *COMMON, "--batch-size", "32",
              "--out", str(two)])
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((two / "metrics.json").read_text())
    assert m["world_size"] == 2
    assert m["rank_spread"] == {"delta": 0.0, "weights": 0.0}         # identical δ and weights on both ranks
    assert m["steps"] == 2 * (256 // 64) and len(m["history"]) == m["steps"]
    assert m["passes"] == {"forward": 2 * m["steps"], "backward": 2 * m["steps"]}   # per process
    assert sorted(f.name for f in two.iterdir()) == ["checkpoint.pt", "delta.pt", "metrics.json", "model.pt"]
    assert p.stdout.count("wrote") == 1                                # rank 0 alone reports and writes

    q = _run(["-m", "uat_core", "train", *COMMON, "--batch-size", "64", "--out", str(one)])
    assert q.returncode == 0, q.stderr[-3000:]
    m1 = json.loads((one / "metrics.json").read_text())
    assert m1["steps"] == m["steps"]

    # close to one process over the same global batches: the weight updates point the same way, and so does δ.
    # Seen (seeds 0-3): weight-update cosine 0.96-0.99, δ cosine 0.68-0.84; unrelated runs: 0.01 and 0.11.
    w0 = torch.cat([q.detach().flatten() for q in new_model("smallcnn", digits_train, 0).parameters()])
    w = {k: torch.cat([q.detach().flatten() for q in load_checkpoint(d / "model.pt")[0].parameters()])
         for k, d in (("two", two), ("one", one))}
    assert F.cosine_similarity(w["two"] - w0, w["one"] - w0, dim=0) > 0.9
    d2, d1 = torch.load(two / "delta.pt"), torch.load(one / "delta.pt")
    assert d2.abs().max() <= 32 / 255 + 1e-6
    assert F.cosine_similarity(d2.flatten(), d1.flatten(), dim=0) > 0.5


INJECT = '''
import sys
import torch.distributed as dist
import uat_core.engine.checkpoint as C
import uat_core.engine.training as T
what = sys.argv.pop(1)
if what == "diverge":                       # rank 1 alone finds a NaN loss at the end of its 3rd step
    real = T.Trainer._step
    def step(self, *a, **k):
        rec = real(self, *a, **k)            # the step's collectives (DDP) have run on every rank
        if dist.get_rank() == 1 and self.step_i == 2:
            raise FloatingPointError("loss")
        return rec
    T.Trainer._step = step
else:                                       # rank 0's disk fails when it writes the epoch checkpoint
    def save(*a, **k):
        raise OSError(28, "No space left on device")
    C.save_checkpoint = save
from uat_core.cli import main
raise SystemExit(main(sys.argv[1:]))
'''


@pytest.mark.slow
@needs_gloo
@pytest.mark.parametrize("what,words", [
    ("diverge", "diverged (the loss or δ became NaN or Inf) on process 1 at step 3"),
    ("disk", "could not write the checkpoint (No space left on device)")])
def test_a_failure_on_one_rank_ends_every_rank_with_the_same_line(tmp_path, what, words):
    script = tmp_path / "inject.py"
    script.write_text(INJECT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "UAT_DIST_TIMEOUT": "60"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                        f"--master_port={_free_port()}", str(script), what, "train", *COMMON, "--batch-size", "32",
                        "--out", str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=240)
    text = p.stdout + p.stderr                          # two processes: their lines may interleave
    assert p.returncode != 0
    assert text.count("error: ") == 2 and text.count(words) == 2, text[-3000:]
    # torchrun itself prints a ChildFailedError traceback when a child exits non-zero; ours print none
    assert "uat_core" not in "".join(ln for ln in p.stderr.splitlines() if ln.strip().startswith("File ")), \
        p.stderr[-3000:]

"""``torchrun`` for attacks and evaluation (uat_core/distributed.py), on CPU with gloo.

Under ``torchrun --nproc_per_node=2`` with ``--batch-size B``, Alg. 2 must give the δ of one process with
``--batch-size 2B`` (the same global minibatches; each rank sums its block's gradients, one all-reduce adds them
up) and eval the figures of one process (each rank scores its shard, the counts are summed), in memory and over a
streamed folder (every rank checks, decodes and scores only its shard of the files). ``--strong`` and
``--method idf`` refuse torchrun, and so does a run with more processes than images to share: one line, before
any work.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import DIGITS_NATURAL, files_under
from test_stream import make_jpeg_tree

ROOT = Path(__file__).resolve().parents[1]
needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")
# what may differ between one process and two: the time, the world size, the per-process batch, the paths
VARIES = {"seconds", "world_size", "config", "history", "files"}


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ABORT = "terminate called without an active exception"


def torchrun(n: int, *argv) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=n -m uat_core argv`` on the CPU (gloo).

    Seen once in a full parallel test run on 2 busy cores (not reproduced alone, 3 of 3 passed): a rank of a
    streamed ``train`` aborted in C++ ("terminate called without an active exception", exit -6). Not yet
    understood (issue 24's closing note); until it is, that one signature is run again once, into a fresh --out.
    Any other failure, or the same abort twice, fails the test."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "UAT_DIST_TIMEOUT": "120"}
    for attempt in range(2):
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
                            "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "uat_core",
                            *[str(a) for a in argv]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if p.returncode == 0 or ABORT not in p.stderr or attempt:
            return p
        out = Path(str(argv[list(map(str, argv)).index("--out") + 1])) if "--out" in map(str, argv) else None
        if out is not None and out.exists():
            shutil.rmtree(out)
    return p


def same_run(one: Path, two: Path, atol: float = 1e-6) -> dict:
    """Assert the attack in ``two`` (2 processes) gave ``one``'s δ (to float tolerance) and figures; its metrics."""
    d1, d2 = torch.load(one / "perturbation.pt"), torch.load(two / "perturbation.pt")
    assert torch.allclose(d1, d2, rtol=0, atol=atol), float((d1 - d2).abs().max())
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m2["world_size"] == 2 and m1["world_size"] == 1
    assert m2["config"]["rank_spread"] == 0.0                    # every rank held the same δ
    for k in m1.keys() - VARIES:
        assert m1[k] == m2[k], k                                 # counts summed across ranks: equal figures
    assert [r["step"] for r in m1["history"]] == [r["step"] for r in m2["history"]]
    for r1, r2 in zip(m1["history"], m2["history"]):             # the same minibatches, step after step
        assert r1["acc"] == r2["acc"] and r1.get("target_rate") == r2.get("target_rate")
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5, abs=1e-6)
    return m2


@pytest.mark.slow
@needs_gloo
def test_attack_and_eval_under_torchrun_match_one_process(cli, tmp_path):
    # 200 images, global minibatch 32: the last of each epoch (8 images) leaves rank 1 an empty block
    common = ["--dataset", "digits", "--checkpoint", DIGITS_NATURAL, "--eps", 32, "--optimizer", "sgd",
              "--step-size", 500, "--attack-size", 200, "--epochs", 2, "--eval-size", 101, "--quiet"]
    rc, _, err = cli("attack", *common, "--batch-size", 32, "--out", tmp_path / "one")
    assert rc == 0, err
    p = torchrun(2, "attack", *common, "--batch-size", 16, "--out", tmp_path / "two")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("wrote") == 1 and "2 processes" in p.stdout      # rank 0 alone reports and writes
    m = same_run(tmp_path / "one", tmp_path / "two")
    assert m["eval_size"] == 101 and m["attack_size"] == 200 and m["steps"] == 2 * 7

    # eval: each rank scores its shard (51 and 50 images), the counts are summed
    ev = ["eval", "--dataset", "digits", "--checkpoint", DIGITS_NATURAL, "--perturbation",
          tmp_path / "one" / "perturbation.pt", "--eval-size", 101, "--quiet"]
    rc, _, err = cli(*ev, "--out", tmp_path / "eval-one")
    assert rc == 0, err
    p = torchrun(2, *ev, "--out", tmp_path / "eval-two")
    assert p.returncode == 0, p.stderr[-3000:]
    e1, e2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("eval-one", "eval-two"))
    assert e2.pop("world_size") == 2 and e1.pop("world_size") == 1
    e1.pop("perturbation"), e2.pop("perturbation")
    assert e1 == e2 and e2["n"] == 101
    assert files_under(tmp_path / "eval-two") == ["grid.png", "metrics.json"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny JPEG tree (3 classes, 10 training and 5 test images each) and a SmallCNN trained on it."""
    from uat_core.cli import main
    root = make_jpeg_tree(tmp_path_factory.mktemp("tree") / "tree", {"train": 10, "val": 5})
    out = tmp_path_factory.mktemp("model") / "m"
    assert main(["train", "--dataset", f"imagefolder:{root}", "--image-size", "32", "--stream", "on", "--workers",
                 "0", "--epochs", "1", "--batch-size", "10", "--no-report", "--quiet", "--out", str(out)]) == 0
    return root, out / "model.pt"


@pytest.mark.slow
@needs_gloo
def test_a_streamed_folder_under_torchrun(cli, tmp_path, folder):
    """Each rank checks and decodes its shard of the attack set (gathered: the same images as one process)
    and scores its shard of the streamed test split: the δ and the figures of one process."""
    root, ckpt = folder
    common = ["--dataset", f"imagefolder:{root}", "--checkpoint", ckpt, "--stream", "on", "--workers", 0,
              "--eps", 16, "--target", 1, "--attack-size", 21, "--epochs", 2, "--quiet"]   # targeted, sign steps
    rc, _, err = cli("attack", *common, "--batch-size", 8, "--out", tmp_path / "one")
    assert rc == 0, err
    p = torchrun(2, "attack", *common, "--batch-size", 4, "--out", tmp_path / "two")
    assert p.returncode == 0, p.stderr[-3000:]
    m = same_run(tmp_path / "one", tmp_path / "two")
    assert m["streamed"] is True and m["attack_size"] == 21 and m["eval_size"] == 15 and "target_rate" in m

    # training over the stream: each rank decodes only its blocks; the test split is scored in shards
    p = torchrun(2, "train", "--dataset", f"imagefolder:{root}", "--image-size", 32, "--stream", "on", "--workers", 0,
                 "--epochs", 1, "--batch-size", 5, "--no-report", "--quiet", "--out", tmp_path / "train")
    assert p.returncode == 0, p.stderr[-3000:]
    t = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert t["world_size"] == 2 and t["steps"] == 3 and t["eval_size"] == 15
    assert t["streamed"] == {"train": True, "test": True} and t["rank_spread"]["weights"] == 0.0
    # the shards were scored with rank 0's model (its BatchNorm statistics too): the one model.pt holds
    zero = tmp_path / "zero.pt"
    torch.save(torch.zeros(3, 32, 32), zero)
    rc, _, err = cli("eval", "--dataset", f"imagefolder:{root}", "--checkpoint", tmp_path / "train" / "model.pt",
                     "--perturbation", zero, "--stream", "on", "--workers", 0, "--quiet", "--out", tmp_path / "check")
    assert rc == 0, err
    e = json.loads((tmp_path / "check" / "metrics.json").read_text())
    assert (e["clean_top1"], e["n"]) == (t["clean_top1"], t["eval_size"])


@pytest.mark.parametrize("argv,words", [
    (["attack", "--strong"], ["--strong runs in one process only", "without torchrun"]),
    (["attack", "--method", "idf"], ["--method idf runs in one process only"]),
    (["attack", "--attack-size", 2], ["--nproc_per_node=3", "2 attack images", "at most 2 processes"]),
    (["attack", "--eval-size", 2], ["--nproc_per_node=3", "2 test images"]),
    (["eval", "--perturbation", "ZERO", "--eval-size", 2], ["--nproc_per_node=3", "2 test images"]),
])
def test_what_torchrun_refuses_is_one_line_before_any_work(cli, tmp_path, monkeypatch, argv, words):
    """Checked by every process before the process group starts (so here, in one process with torchrun's
    environment); rank 0 alone prints the line."""
    zero = tmp_path / "zero.pt"
    torch.save(torch.zeros(1, 32, 32), zero)
    argv = [zero if a == "ZERO" else a for a in argv]
    args = [*argv, "--dataset", "digits", "--checkpoint", DIGITS_NATURAL, "--quiet", "--out", tmp_path / "out"]
    monkeypatch.setenv("WORLD_SIZE", "3")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        rc, out, err = cli(*args)
        assert rc == 2 and out == ""
        if rank == "0":
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), err
            assert all(w in lines[0] for w in words), lines[0]
        else:
            assert err == ""                                   # the same check failed there: no second line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@needs_gloo
def test_more_processes_than_test_images_is_one_line_under_torchrun(tmp_path):
    zero = tmp_path / "zero.pt"
    torch.save(torch.zeros(1, 32, 32), zero)
    p = torchrun(3, "eval", "--dataset", "digits", "--checkpoint", DIGITS_NATURAL, "--perturbation", zero,
                 "--eval-size", 2, "--quiet", "--out", tmp_path / "out")
    assert p.returncode != 0
    errors = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("error: ")]
    assert errors == ["error: --nproc_per_node=3 is more than the 2 test images to share among the processes: "
                      "run at most 2 processes (or use more images)"], p.stderr[-3000:]
    assert not (tmp_path / "out").exists()

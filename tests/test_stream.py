"""Streamed image folders (uat_core/stream.py) and every command over a stream, on tiny synthetic JPEG trees.

A stream holds file names, not pixels; its evaluation view is the in-memory path's own preprocessing (the same
images, so the same accuracy); ``attack``, ``eval`` and ``train`` (natural, uat, lowcost) run over it with
``--stream on``; bad folders are one-line errors before any work, a file that only fails mid-stream is
skipped and named in a warning.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import files_under
from test_cli import assert_user_error as one_line
from uat_core.engine.data import load_dataset
from uat_core.engine.errors import UATError, UATWarning
from uat_core.engine.evaluation import evaluate, evaluate_data, evaluate_stream
from uat_core.engine.stream import FolderStream, open_split, train_view

SIZE = 32                  # --image-size of every test here
CLASSES = 3


def make_jpeg_tree(root: Path, per_class: dict[str, int], classes: int = CLASSES, seed: int = 0,
                   size=(40, 36)) -> Path:
    """root/<split>/c<k>/<i>.jpg: noisy images with a class colour (a model learns them in a few steps)."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = size if i % 2 == 0 else (size[1], size[0])
                a = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
                a[..., c % 3] += 120
                Image.fromarray(a).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def damaged_png(path: Path) -> Path:
    """A PNG whose header reads (so the check passes) but whose pixels do not decode."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    for i in range(100, 200):                      # inside the image data, past the IHDR header
        data[i] ^= 0xFF
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """3 classes: 12 training and 6 test images each, 40×36 and 36×40 JPEGs."""
    return make_jpeg_tree(tmp_path_factory.mktemp("stream") / "tree", {"train": 12, "val": 6})


@pytest.fixture(scope="module")
def trained(tree, tmp_path_factory) -> Path:
    """A SmallCNN trained (natural, streamed, one worker process) on the tree: its folder."""
    from uat_core.cli import main
    out = tmp_path_factory.mktemp("run") / "natural"
    rc = main(["train", "--dataset", f"imagefolder:{tree}", "--image-size", str(SIZE), "--stream", "on",
               "--workers", "1", "--epochs", "2", "--batch-size", "12", "--no-report", "--quiet", "--out", str(out)])
    assert rc == 0
    return out


# ---------------------------------------------------------------------------------------------
# the stream object
# ---------------------------------------------------------------------------------------------

def test_a_stream_holds_file_names_not_images(tree):
    s = open_split(f"imagefolder:{tree}", "train", SIZE, mode="on", workers=0).check()
    assert isinstance(s, FolderStream) and len(s) == 36 and s.shape == (3, SIZE, SIZE) and s.num_classes == 3
    assert not hasattr(s, "images")
    for name, value in vars(s).items():           # nothing shaped like images: names and labels, one per file
        if isinstance(value, (torch.Tensor, np.ndarray)):
            assert value.ndim == 1 and len(value) == len(s), name
    assert s.names.dtype.kind == "S" and s.labels.dtype == torch.int64
    assert len(pickle.dumps(s)) < s.decoded_bytes / 20     # what a worker process receives: the list, not pixels
    x, label, err = s[0]
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.uint8 and err is None and label == 0
    small = s.select(6, seed=3)
    assert isinstance(small, FolderStream) and small.labels.tolist() == [0, 0, 1, 1, 2, 2]
    xb, yb = next(small.batches(4))                 # as ImageData.batches: float in [0, 1]
    assert xb.shape == (4, 3, SIZE, SIZE) and xb.dtype == torch.float32 and yb.tolist() == [0, 0, 1, 1]


def test_streamed_images_are_the_in_memory_images(tree):
    name = f"imagefolder:{tree}"
    for split in ("train", "test"):
        mem = load_dataset(name, split, image_size=SIZE, progress=False)
        s = open_split(name, split, SIZE, mode="on", workers=0)
        got = s.load()
        assert torch.equal(got.images, mem.images) and torch.equal(got.labels, mem.labels)
        assert got.classes == mem.classes and got.mean == mem.mean and got.std == mem.std
    mem_sub = load_dataset(name, "train", image_size=SIZE, limit=7, seed=5, progress=False)
    sub = FolderStream.open(name, "train", SIZE).subset(7, seed=5)       # the attack set: the same 7 files
    assert torch.equal(sub.images, mem_sub.images) and torch.equal(sub.labels, mem_sub.labels)


def test_the_heap_is_trimmed_before_decoding_processes_fork_and_only_then(tree, monkeypatch):
    """Forked decoders keep a private copy of every free heap page the parent later reuses (docs/benchmarks.md:
    about 0.9 GB of a one-epoch training run at 224²): the stream gives free pages back before it forks."""
    from uat_core.engine import stream
    calls = []
    monkeypatch.setattr(stream, "_trim_heap", lambda: calls.append(1))
    s = open_split(f"imagefolder:{tree}", "train", SIZE, mode="on", workers=2)
    plan = s.plan(4)
    assert len(plan) > 1
    n = sum(len(y) for _, y in s.iterate(plan))
    assert n == len(s) and calls == [1]                          # once, before the decoding processes start
    s0 = open_split(f"imagefolder:{tree}", "train", SIZE, mode="on", workers=0)
    assert sum(len(y) for _, y in s0.iterate(plan)) == n and calls == [1]     # no processes: nothing to trim
    stream._trim_heap()                                          # the real one runs here without error


def _stacked_in_shared_memory(items):
    """The stream's collate, asked in the decoding process itself whether it stacked into shared memory."""
    from uat_core.engine.stream import _collate
    x, y, errors = _collate(items)
    return x.is_shared(), len(y), errors


def test_decoding_processes_stack_minibatches_straight_into_shared_memory(tree):
    """A minibatch stacked on a decoding process's own heap, then copied to shared memory to be sent, left a
    hole the next minibatch's images fragmented: each process's heap grew by about a minibatch (9.6 MB at
    64 × 224²) every minibatch. Stacked into shared memory, nothing is copied and the heap stays flat."""
    from torch.utils.data import DataLoader
    s = open_split(f"imagefolder:{tree}", "train", SIZE, mode="on", workers=1)
    plan = s.plan(5)
    got = list(DataLoader(s, batch_sampler=plan, num_workers=1, collate_fn=_stacked_in_shared_memory))
    assert [n for _, n, _ in got] == [len(b) for b in plan]
    assert all(shared for shared, _, _ in got)
    from uat_core.engine.stream import _collate
    x, _, _ = _collate([s[i] for i in plan[0]])           # in this process: an ordinary tensor
    assert not x.is_shared() and x.shape == (5, 3, SIZE, SIZE)


def test_a_training_run_scores_a_streamed_test_split_a_training_minibatch_at_a_time(tree, tmp_path, monkeypatch):
    """Inference holds less per image than training: scored at the training minibatch, the evaluation that ends
    a run stays under the run's own peak memory (docs/benchmarks.md)."""
    from uat_core.cli import main
    from uat_core.engine import evaluation
    sizes = []
    real = evaluation._stream_predictions

    def spy(model, data, deltas, batch_size=evaluation.EVAL_BATCH, device=None):
        sizes.append(batch_size)
        return real(model, data, deltas, batch_size, device)
    monkeypatch.setattr(evaluation, "_stream_predictions", spy)
    rc = main(["train", "--dataset", f"imagefolder:{tree}", "--image-size", str(SIZE), "--stream", "on",
               "--workers", "0", "--epochs", "1", "--batch-size", "7", "--no-report", "--quiet",
               "--out", str(tmp_path / "run")])
    assert rc == 0 and sizes == [7]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["eval_size"] == 18                                   # every test image, 7 at a time
    sizes.clear()
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 3))
    evaluate_stream(linear, open_split(f"imagefolder:{tree}", "test", SIZE, mode="on"))
    assert sizes == [evaluation.EVAL_BATCH]                       # elsewhere: the default


def test_training_view_is_seeded_random_resized_crop_and_flip():
    img = torch.arange(3 * 50 * 70, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 50, 70)
    a = train_view(img, 24, torch.Generator().manual_seed(7))
    b = train_view(img, 24, torch.Generator().manual_seed(7))
    c = train_view(img, 24, torch.Generator().manual_seed(8))
    assert a.shape == (3, 24, 24) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    tall = torch.zeros((3, 400, 20), dtype=torch.uint8)                  # no draw fits: the centred fallback
    assert train_view(tall, 16, torch.Generator().manual_seed(0)).shape == (3, 16, 16)


def test_evaluate_stream_equals_evaluate(tree, trained):
    from uat_core.engine.checkpoint import load_checkpoint
    model, _ = load_checkpoint(trained / "model.pt")
    name = f"imagefolder:{tree}"
    mem = load_dataset(name, "test", image_size=SIZE, progress=False)
    s = open_split(name, "test", SIZE, mode="on", workers=0)
    d1 = torch.full((3, SIZE, SIZE), 0.1)
    d2 = -d1
    want = [evaluate(model, mem.images, mem.labels, d, 3) for d in (d1, d2)]
    assert evaluate_stream(model, s, [d1, d2], batch_size=5) == want          # minibatches of 5: same figures
    assert evaluate_data(model, s, d1) == want[0] == evaluate_data(model, mem, d1, 3)
    assert evaluate_stream(model, s) == evaluate(model, mem.images, mem.labels, None, 3)


def test_a_streamed_run_resumes_exactly(tree):
    from uat_core.recipes.pipeline import make_trainer
    from uat_core.engine.training import TrainConfig

    s = open_split(f"imagefolder:{tree}", "train", SIZE, mode="on", workers=0).check()
    cfg = TrainConfig(algorithm="lowcost", epochs=2, batch_size=12, lr=0.05, track_every=0, snapshot_every=0)
    whole = make_trainer("smallcnn", s, cfg)
    whole.run()
    part = make_trainer("smallcnn", s, cfg)
    for ev in part:                                  # stop mid-epoch (step 4 of 6: epoch 1, step 1)
        if ev.kind == "step" and ev.step == 4:
            part.stop()
    state, weights = part.state(), {k: v.clone() for k, v in part.model.net.state_dict().items()}
    again = make_trainer("smallcnn", s, cfg)
    again.load_state(state)
    again.model.net.load_state_dict(weights)
    again.run()
    assert again.step_i == whole.step_i == 6
    for (k, v), w in zip(whole.model.net.state_dict().items(), again.model.net.state_dict().values()):
        assert torch.equal(v, w), k
    assert torch.equal(whole.result.delta, again.result.delta)


def test_streamed_global_batches_are_the_union_of_the_rank_blocks(tree):
    """Under torchrun rank r takes the r-th block of each global batch, as in memory; an image's augmentation
    is seeded by (seed, epoch, image), so W processes see exactly the images one process sees, augmented."""
    from uat_core.recipes.pipeline import make_trainer
    from uat_core.engine.training import TrainConfig

    s = open_split(f"imagefolder:{tree}", "train", SIZE, mode="on", workers=0)
    one = make_trainer("smallcnn", s, TrainConfig(batch_size=12))
    ranks = []
    for r in range(3):
        t = make_trainer("smallcnn", s, TrainConfig(batch_size=4))
        t.rank, t.world, t.steps_per_epoch = r, 3, one.steps_per_epoch   # as under torchrun, without a group
        ranks.append(t)
    for epoch in range(2):
        order = one._order(epoch)
        feeds = [t._stream_batches(order, epoch, 0) for t in ranks]
        for x1, y1, _ in one._stream_batches(order, epoch, 0):
            blocks = [next(f) for f in feeds]
            assert torch.equal(torch.cat([b[1] for b in blocks]), y1)
            assert torch.equal(torch.cat([b[0] for b in blocks]), x1)


# ---------------------------------------------------------------------------------------------
# every command over a stream
# ---------------------------------------------------------------------------------------------

def test_train_natural_over_a_stream_writes_its_outputs(trained):
    assert files_under(trained) == ["checkpoint.pt", "metrics.json", "model.pt"]
    m = json.loads((trained / "metrics.json").read_text())
    assert m["streamed"] == {"train": True, "test": True} and m["train_size"] == 36 and m["eval_size"] == 18
    assert m["clean_top1"] > 0.5                     # three colours: learnt in 6 steps


def test_resume_keeps_the_stream_mode(cli, tree, trained, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    rc, _, err = cli("train", "--dataset", f"imagefolder:{tree}", "--image-size", SIZE, "--stream", "off",
                     "--epochs", 2, "--batch-size", 12, "--no-report", "--quiet", "--resume", "--force", "--out", run)
    one_line(rc, err, "cannot resume", "streamed from disk", "--stream on")


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["uat", "lowcost"])
def test_universal_training_over_a_stream(cli, tree, tmp_path, algorithm):
    out = tmp_path / algorithm
    rc, stdout, err = cli("train", "--dataset", f"imagefolder:{tree}", "--image-size", SIZE, "--stream", "on",
                          "--workers", 0 if algorithm == "uat" else 1, "--algorithm", algorithm, "--epochs", 1,
                          "--batch-size", 12, "--report-attack-size", 9, "--report-attack-epochs", 1,
                          "--quiet", "--out", out)
    assert rc == 0, err
    assert files_under(out) == ["checkpoint.pt", "delta.pt", "metrics.json", "model.pt"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["streamed"]["train"] and m["steps"] == 3 and "robust_top1" in m
    assert m["robustness"]["attack"]["attack_size"] == 9          # a stratified subset of the folder, decoded


@pytest.mark.slow
def test_attack_and_eval_over_a_stream_match_in_memory(cli, tree, trained, tmp_path):
    ckpt = trained / "model.pt"
    common = ["--dataset", f"imagefolder:{tree}", "--checkpoint", ckpt, "--quiet"]
    runs = {}
    for mode in ("on", "off"):
        out = tmp_path / f"attack-{mode}"
        rc, _, err = cli("attack", *common, "--stream", mode, "--workers", 1, "--eps", 32, "--epochs", 2,
                         "--attack-size", 12, "--batch-size", 6, "--out", out)
        assert rc == 0, err
        assert files_under(out) == sorted(["grid.png", "metrics.json", "perturbation.gif", "perturbation.npy",
                                           "perturbation.png", "perturbation.pt"])
        runs[mode] = json.loads((out / "metrics.json").read_text())
    on, off = runs["on"], runs["off"]
    assert on["streamed"] is True and off["streamed"] is False and on["attack_size"] == 12 == off["attack_size"]
    for k in ("clean_top1", "perturbed_top1", "per_class_clean", "per_class_perturbed", "fooling_ratio", "best_fixed"):
        assert on[k] == off[k], k                      # the same attack set, the same test images: the same δ
    evals = {}
    for mode in ("on", "off"):
        out = tmp_path / f"eval-{mode}"
        rc, _, err = cli("eval", *common, "--perturbation", tmp_path / "attack-on" / "perturbation.pt",
                         "--stream", mode, "--workers", 0, "--out", out)
        assert rc == 0, err
        assert files_under(out) == ["grid.png", "metrics.json"]
        evals[mode] = json.loads((out / "metrics.json").read_text())
    assert evals["on"].pop("streamed") is True and evals["off"].pop("streamed") is False
    assert evals["on"] == evals["off"] and evals["on"]["eval_size"] == 18
    rc, _, err = cli("attack", *common, "--stream", "on", "--workers", 0, "--method", "idf", "--eps", 32,
                     "--epochs", 1, "--attack-size", 9, "--out", tmp_path / "idf")
    assert rc == 0, err                                # iDeepFool too: the attack set is decoded
    assert json.loads((tmp_path / "idf" / "metrics.json").read_text())["attack_size"] == 9


def test_auto_streams_above_the_threshold_only(cli, tree, trained, tmp_path):
    delta = tmp_path / "zero.pt"
    torch.save(torch.zeros(3, SIZE, SIZE), delta)
    args = ["eval", "--dataset", f"imagefolder:{tree}", "--checkpoint", trained / "model.pt", "--perturbation",
            delta, "--workers", 0]
    rc, _, err = cli(*args, "--out", tmp_path / "a")                        # 18 images: far below 2048 MB
    assert rc == 0, err
    assert "streaming" not in err
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["streamed"] is False
    rc, _, err = cli(*args, "--stream-threshold", 0.01, "--out", tmp_path / "b")   # 18 × 3 × 32² B > 0.01 MB
    assert rc == 0, err
    assert "note: streaming the test split" in err
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["streamed"] is True


def test_the_stream_options_have_help_and_are_checked(cli, tree, trained, tmp_path):
    for cmd in ("train", "attack", "eval"):
        rc, out, _ = cli(cmd, "--help")
        assert rc == 0 and all(f in out for f in ("--stream ", "--stream-threshold", "--workers"))
    base = ["eval", "--dataset", f"imagefolder:{tree}", "--checkpoint", trained / "model.pt", "--perturbation",
            trained / "model.pt", "--out", tmp_path / "x"]
    for extra, words in ((["--stream", "maybe"], ["stream mode", "auto, on, off"]),
                         (["--workers", "-1"], ["workers"]), (["--stream-threshold", "0"], ["threshold"])):
        one_line(*cli(*base, *extra)[::2], *words)
    rc, _, err = cli("attack", "--dataset", "digits", "--checkpoint", trained / "model.pt", "--stream", "on",
                     "--out", tmp_path / "y")
    one_line(rc, err, "--stream on", "digits")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage,words", [
    ("not_an_image", ["fake.jpg", "not an image"]),
    ("extra_class", ["c9", "not one of the train classes"]),
    ("too_small", ["tiny.jpg", "20×16", "smaller than the 32×32 crop"]),
])
@pytest.mark.parametrize("cmd", ["train", "eval"])
def test_bad_folders_are_one_line_errors_before_any_work(cli, tmp_path, trained, damage, words, cmd):
    root = make_jpeg_tree(tmp_path / "tree", {"train": 4, "val": 2})
    if damage == "not_an_image":
        (root / "val" / "c1" / "fake.jpg").write_text("<html>404 Not Found</html>")
    elif damage == "extra_class":
        make_jpeg_tree(tmp_path / "more", {"val": 2}, classes=1)
        (tmp_path / "more" / "val" / "c0").rename(root / "val" / "c9")
    else:
        Image.new("RGB", (20, 16), (200, 0, 0)).save(root / "val" / "c2" / "tiny.jpg")
    out = tmp_path / "out"
    if cmd == "train":
        argv = ["train", "--epochs", 1, "--batch-size", 4, "--no-report"]
    else:
        argv = ["eval", "--checkpoint", trained / "model.pt", "--perturbation", tmp_path / "never-read.pt"]
        torch.save(torch.zeros(3, SIZE, SIZE), tmp_path / "never-read.pt")
    rc, _, err = cli(*argv, "--dataset", f"imagefolder:{root}", "--image-size", SIZE, "--stream", "on",
                     "--workers", 0, "--quiet", "--out", out)
    one_line(rc, err, *words)
    assert files_under(out) == []                   # refused before any work: nothing written


def test_a_damaged_file_mid_stream_is_skipped_and_named(cli, tmp_path, trained):
    root = make_jpeg_tree(tmp_path / "tree", {"train": 4, "val": 2})
    bad = damaged_png(root / "val" / "c0" / "zz_damaged.png")
    damaged_png(root / "train" / "c1" / "zz_damaged.png")
    s = open_split(f"imagefolder:{root}", "test", SIZE, mode="on", workers=1).check()     # the header is fine
    with pytest.warns(UATWarning, match="zz_damaged.png"):         # decoded by a worker process, in 4 minibatches
        got = [len(y) for _, y in s.iterate(s.plan(2))]
    assert got == [2, 1, 2, 1] and len(s) == 7                      # c0: 000, 001, zz_damaged; c1: …
    with pytest.warns(UATWarning, match="zz_damaged.png"):         # decoded here
        assert len(s.load()) == 6
    delta = tmp_path / "d.pt"
    torch.save(torch.zeros(3, SIZE, SIZE), delta)
    rc, _, err = cli("eval", "--dataset", f"imagefolder:{root}", "--checkpoint", trained / "model.pt",
                     "--perturbation", delta, "--image-size", SIZE, "--stream", "on", "--workers", 1, "--quiet",
                     "--out", tmp_path / "e")
    assert rc == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warned and all(str(bad) in line and "skipped" in line for line in warned)
    assert "Traceback" not in err
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["eval_size"] == 6
    rc, _, err = cli("train", "--dataset", f"imagefolder:{root}", "--image-size", SIZE, "--stream", "on",
                     "--workers", 0, "--epochs", 2, "--batch-size", 13, "--no-report", "--quiet",
                     "--out", tmp_path / "t")
    assert rc == 0, err                              # 13 files a step, one of them skipped: the run goes on
    assert "zz_damaged.png" in err and (tmp_path / "t" / "model.pt").is_file()


def test_open_split_refuses_what_load_dataset_refuses(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UATError, match="no images found"):
        open_split(f"imagefolder:{tmp_path / 'empty'}", "train", SIZE, mode="on")
    with pytest.raises(UATError, match="unknown stream mode"):
        open_split("digits", "train", SIZE, mode="always")
    assert open_split("digits", "train", SIZE, mode="auto") is None

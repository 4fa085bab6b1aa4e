"""Checkpoints (round trip, refusals), safe file writing, and perturbation export (tensors and pictures)."""
from __future__ import annotations

import io
import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DIGITS_NATURAL, files_under
from uat_core.engine.checkpoint import load_checkpoint, model_meta, read_checkpoint, save_checkpoint
from uat_core.engine.errors import UATError
from uat_core.engine.export import (PERTURBATION_FILES, comparison_grid, delta_image, gif_bytes, load_perturbation,
                             save_perturbation)
from uat_core.engine import fileio
from uat_core.engine.fileio import atomic_bytes, atomic_write, output_set, prepare_out_dir, write_json
from uat_core.engine.models import build_model


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


def digits_meta(arch="smallcnn", classes=10, channels=1):
    return model_meta(arch, "digits", [str(i) for i in range(classes)], channels, 32, [0.3] * channels,
                      [0.4] * channels, training={"algorithm": "natural"}, metrics={"clean_top1": 0.5})


def fresh(arch="smallcnn", classes=10, channels=1, seed=0):
    torch.manual_seed(seed)
    model = build_model(arch, classes, channels, [0.3] * channels, [0.4] * channels)
    with torch.no_grad():                  # non-trivial BatchNorm statistics, so they must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,channels", [("smallcnn", 1), ("resnet20", 3), ("resnet8_w2_id", 3), ("wrn10_1", 3)])
def test_round_trip_gives_the_same_function_and_meta(tmp_path, arch, channels):
    model = fresh(arch, 10, channels)
    meta = digits_meta(arch, 10, channels)
    path = save_checkpoint(tmp_path / "m.pt", model, meta, extra={"epoch": 3})
    loaded, meta2 = load_checkpoint(path, {"num_classes": 10, "shape": (channels, 32, 32), "arch": arch})
    assert meta2 == meta and not loaded.training
    x = torch.rand(5, channels, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert read_checkpoint(path)["extra"] == {"epoch": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]          # no temporary files left behind


def test_shipped_model_round_trips(tmp_path):
    model, meta = load_checkpoint(DIGITS_NATURAL)
    again, meta2 = load_checkpoint(save_checkpoint(tmp_path / "copy.pt", model, meta))
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert meta2 == meta and meta["arch"] == "smallcnn" and meta["num_classes"] == 10


@pytest.mark.parametrize("expect,word", [
    ({"num_classes": 5}, "classes"),
    ({"shape": (3, 32, 32)}, "channel"),
    ({"arch": "resnet20"}, "resnet20"),
])
def test_mismatched_checkpoint_is_refused(expect, word):
    with pytest.raises(UATError) as e:
        load_checkpoint(DIGITS_NATURAL, expect)
    assert word in one_line(e)


def test_weights_of_another_architecture_are_refused(tmp_path):
    """meta says resnet20, weights are a SmallCNN's: refused with a one-line message, not a stack of keys."""
    path = save_checkpoint(tmp_path / "lie.pt", fresh("smallcnn", 10, 3), digits_meta("resnet20", 10, 3))
    with pytest.raises(UATError) as e:
        load_checkpoint(path)
    assert "resnet20" in one_line(e)
    path = save_checkpoint(tmp_path / "k.pt", fresh("smallcnn", 5, 1), digits_meta("smallcnn", 10, 1))
    with pytest.raises(UATError) as e:                  # 5-class weights under a 10-class meta
        load_checkpoint(path)
    one_line(e)


class Foreign:
    """Anything that is not a tensor: weights_only loading must refuse to unpickle it."""
    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "text", "foreign_dict", "tensor", "pickle",
                                  "numpy", "missing", "folder"])
def test_corrupt_or_foreign_files_are_refused(tmp_path, kind):
    p = tmp_path / "model.pt"
    if kind == "random":
        p.write_bytes(np.random.default_rng(0).bytes(3000))
    elif kind == "truncated":
        data = DIGITS_NATURAL.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not a model\n")
    elif kind == "foreign_dict":
        torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, p)
    elif kind == "tensor":
        torch.save(torch.ones(3), p)
    elif kind == "pickle":
        with open(p, "wb") as f:
            pickle.dump(Foreign(), f)
    elif kind == "numpy":
        np.save(open(p, "wb"), np.ones(3))
    elif kind == "folder":
        p.mkdir()
    with pytest.raises(UATError) as e:
        load_checkpoint(p)
    assert str(p) in one_line(e)


# ---------------------------------------------------------------------------------------------
# safe writing
# ---------------------------------------------------------------------------------------------

def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = atomic_bytes(tmp_path / "a.bin", b"old")

    def half_then_crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"new but incomp")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old"
    assert files_under(tmp_path) == ["a.bin"]                        # the temporary file is gone
    atomic_bytes(target, b"new")
    assert target.read_bytes() == b"new" and files_under(tmp_path) == ["a.bin"]


def test_prepare_out_dir_refuses_to_overwrite_without_force(tmp_path):
    out = prepare_out_dir(tmp_path / "run", ["metrics.json"])
    assert out.is_dir()
    (out / "metrics.json").write_text("{}")
    with pytest.raises(UATError) as e:
        prepare_out_dir(out, ["perturbation.pt", "metrics.json"])
    assert "--force" in one_line(e)
    assert prepare_out_dir(out, ["metrics.json"], force=True) == out
    (tmp_path / "file").write_text("x")
    with pytest.raises(UATError):
        prepare_out_dir(tmp_path / "file", ["metrics.json"])


def _old_set(out: Path) -> None:
    out.mkdir()
    for name, text in (("metrics.json", "old"), ("grid.png", "old"), ("perturbation.gif", "old"),
                       ("notes.txt", "mine")):
        (out / name).write_text(text)


NAMES = ["metrics.json", "grid.png", "perturbation.gif"]


@pytest.mark.parametrize("atomic", [True, False], ids=["exchange", "file-by-file"])
def test_an_output_set_replaces_the_old_one_whole_and_keeps_other_files(tmp_path, monkeypatch, atomic):
    out = tmp_path / "run"
    _old_set(out)
    ino = out.stat().st_ino
    swaps = []
    real = fileio._exchange
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: swaps.append(1) or (atomic and real(a, b)))
    with output_set(out, NAMES, force=True) as stage:
        assert stage.parent == tmp_path and stage.name.startswith(".run.uat-new-")
        (stage / "metrics.json").write_text("new")
        (stage / "grid.png").write_text("new")
        assert (out / "metrics.json").read_text() == "old"           # nothing in place before the block ends
    # the new set, the old output it lacks removed, the user's own file kept, no staging folder left
    assert files_under(out) == ["grid.png", "metrics.json", "notes.txt"]
    assert {n: (out / n).read_text() for n in files_under(out)} == {"grid.png": "new", "metrics.json": "new",
                                                                    "notes.txt": "mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and swaps == [1]
    # on Linux the two folders traded places in one call (a new inode); elsewhere, or without it, file by file
    assert (out.stat().st_ino != ino) == (atomic and sys.platform.startswith("linux"))


def test_a_failed_or_refused_output_set_leaves_the_old_one_untouched(tmp_path):
    out = tmp_path / "run"
    _old_set(out)
    with pytest.raises(RuntimeError):
        with output_set(out, NAMES, force=True) as stage:
            (stage / "metrics.json").write_text("new")
            raise RuntimeError("disk full")
    assert {n: (out / n).read_text() for n in files_under(out)}["metrics.json"] == "old"
    assert len(files_under(out)) == 4 and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with pytest.raises(UATError) as e:                            # without --force: refused before any staging
        with output_set(out, NAMES):
            pass
    assert "--force" in one_line(e) and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_new_output_set_appears_at_once_with_the_users_umask(tmp_path):
    import os
    old = os.umask(0o027)
    try:
        with output_set(tmp_path / "a" / "run", NAMES) as stage:
            write_json(stage / "metrics.json", {"x": 1})
            assert not (tmp_path / "a" / "run").exists()
    finally:
        os.umask(old)
    out = tmp_path / "a" / "run"
    assert files_under(tmp_path / "a") == ["run/metrics.json"]
    assert out.stat().st_mode & 0o777 == 0o750


def test_a_killed_run_leaves_the_old_set_and_its_staging_folder_is_cleaned_next_time(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "run"
    _old_set(out)
    code = ("import sys, time; from uat_core.engine.fileio import output_set\n"
            f"with output_set({str(out)!r}, {NAMES!r}, force=True) as stage:\n"
            "    (stage / 'metrics.json').write_text('new'); print('staged', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert (out / "metrics.json").read_text() == "old" and len(files_under(out)) == 4
    stale = [p for p in tmp_path.iterdir() if p.name != "run"]
    assert len(stale) == 1 and ".uat-new-" in stale[0].name      # SIGKILL gave it no chance to clean up
    time.sleep(0.01)
    with output_set(out, NAMES, force=True) as stage:
        (stage / "metrics.json").write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (out / "metrics.json").read_text() == "newer"


def test_write_json_handles_infinity_nan_and_tensors(tmp_path):
    p = write_json(tmp_path / "m.json", {"beta": math.inf, "bad": float("nan"), "t": torch.tensor(0.5),
                                         "nested": [{"x": -math.inf}]})
    assert json.loads(p.read_text()) == {"beta": "inf", "bad": None, "t": 0.5, "nested": [{"x": "-inf"}]}


# ---------------------------------------------------------------------------------------------
# perturbation files and pictures
# ---------------------------------------------------------------------------------------------

def test_delta_picture_uses_the_fixed_scale(tmp_path):
    eps = 8 / 255
    delta = torch.zeros(3, 4, 4)
    delta[0, 0, 0] = eps          # +ε -> white
    delta[1, 0, 0] = -eps         # -ε -> black
    delta[2, 0, 0] = eps / 2      # +ε/2 -> 0.75 -> 191
    delta[0, 1, 2] = 0.3 * eps    # 0.65 -> 166
    img = delta_image(delta, eps, scale=8)
    assert img.size == (32, 32) and img.mode == "RGB"
    a = np.asarray(img)                                            # (H*8, W*8, 3)
    assert tuple(a[0, 0]) == (255, 0, 191)
    assert tuple(a[7, 7]) == (255, 0, 191)                         # nearest-neighbour magnification
    assert tuple(a[8 * 1 + 3, 8 * 2 + 3]) == (round(0.65 * 255), 128, 128)
    assert tuple(a[31, 31]) == (128, 128, 128)                     # δ = 0 is mid-grey
    gray = delta_image(torch.full((1, 2, 2), -eps / 4), eps, scale=1)
    assert gray.mode == "L" and np.asarray(gray)[0, 0] == round((0.5 - 1 / 8) * 255)


def test_gif_frames_share_one_scale():
    eps = 10 / 255
    full = torch.linspace(-eps, eps, 16).view(1, 4, 4)
    frames_in = [(1, full / 4), (2, full / 2), (3, full)]
    gif = Image.open(io.BytesIO(gif_bytes(frames_in, eps, scale=1)))
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("L"), dtype=float))
    assert len(frames) == 3
    for (_, d), f in zip(frames_in, frames):
        want = np.clip((d[0].numpy() / (2 * eps) + 0.5) * 255, 0, 255)
        np.testing.assert_allclose(f, want, atol=2.5)              # same δ/(2ε)+0.5 scale in every frame
    # a per-frame rescaling would make the first frame as contrasted as the last; it is not
    assert np.ptp(frames[0]) < 0.3 * np.ptp(frames[2])


def test_save_and_load_perturbation_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    eps = 8 / 255
    delta = (torch.rand(3, 32, 32, generator=g) * 2 - 1) * eps
    files = save_perturbation(tmp_path, delta, eps, [(10, delta / 2), (20, delta)])
    assert sorted(Path(f).name for f in files.values()) == sorted(PERTURBATION_FILES)
    assert torch.equal(load_perturbation(tmp_path / "perturbation.pt", (3, 32, 32)), delta)
    assert torch.equal(load_perturbation(tmp_path / "perturbation.npy", (3, 32, 32)), delta)
    png = np.asarray(Image.open(tmp_path / "perturbation.png"))
    i, j = 5, 17
    want = [round(float(delta[c, i, j] / (2 * eps) + 0.5) * 255) for c in range(3)]
    np.testing.assert_allclose(png[8 * i, 8 * j], want, atol=1)
    assert Image.open(tmp_path / "perturbation.gif").n_frames == 2
    assert not [n for n in files_under(tmp_path) if n.endswith(".tmp")]


def test_non_finite_perturbation_is_never_written(tmp_path):
    delta = torch.zeros(1, 4, 4)
    delta[0, 1, 1] = float("nan")
    with pytest.raises(UATError):
        save_perturbation(tmp_path / "out", delta, 0.1)
    with pytest.raises(UATError):
        save_perturbation(tmp_path / "out", torch.zeros(1, 4, 4), 0.1, [(1, delta)])
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("kind,word", [
    ("shape", "shape"), ("nan", "NaN"), ("4d", "(C,H,W)"), ("int", "(C,H,W)"), ("garbage", "readable"),
    ("missing", "not found"), ("pickle", "readable"),
])
def test_bad_perturbation_files_are_refused(tmp_path, kind, word):
    p = tmp_path / ("d.npy" if kind in ("shape", "nan") else "d.pt")
    if kind == "shape":
        np.save(p, np.zeros((3, 32, 32), np.float32))
    elif kind == "nan":
        np.save(p, np.full((1, 32, 32), np.nan, np.float32))
    elif kind == "4d":
        torch.save(torch.zeros(1, 1, 32, 32), p)
    elif kind == "int":
        torch.save(torch.zeros(1, 32, 32, dtype=torch.int64), p)
    elif kind == "garbage":
        p.write_bytes(b"\x00\x01garbage" * 10)
    elif kind == "pickle":
        with open(p, "wb") as f:
            pickle.dump(Foreign(), f)
    with pytest.raises(UATError) as e:
        load_perturbation(p, (1, 32, 32))
    assert word in one_line(e)


def test_comparison_grid_layout():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    delta = torch.full((1, 8, 8), 0.1)
    img = comparison_grid(x, delta, ["a", "b"], torch.tensor([0, 1, 0]), torch.tensor([1, 1, 1]),
                          torch.tensor([0, 1, 1]), torch.tensor([0.9, 0.8, 0.7]), scale=2, ncol=8)
    # one block of two rows (clean, perturbed) of 3 tiles (8*2 px + 4 border) with a caption line each
    assert img.size == (3 * (16 + 4), 2 * (16 + 14 + 4))

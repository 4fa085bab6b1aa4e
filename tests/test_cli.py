"""The command line, end to end on digits (and on a CIFAR-10 slice when the copy is there).

Contract of ``attack``: OUT/perturbation.pt (C×H×W float tensor, pixel units), .npy, .png (δ/(2ε)+0.5),
.gif (δ snapshots, one scale) and OUT/metrics.json (clean/perturbed top-1/top-5, fooling ratio, ε, seconds,
history). Every user error prints exactly one line "error: ..." to stderr and returns 2, before any work and
without writing anything.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CIFAR_ROOT, DIGITS_NATURAL, ZOO, files_under, needs_cifar
from uat_core.engine.checkpoint import load_checkpoint, model_meta, save_checkpoint
from uat_core.cli import build_parser
from uat_core.engine.data import load_dataset
from uat_core.engine.evaluation import evaluate
from uat_core.engine.export import PERTURBATION_FILES
from uat_core.engine.models import build_model

ATTACK_FILES = sorted([*PERTURBATION_FILES, "metrics.json", "grid.png"])
DIGITS_UAT = ZOO / "digits_smallcnn_uat.pt"
DIGITS_DELTA = ZOO / "digits_smallcnn_natural.delta.pt"


def assert_user_error(rc: int, err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


def quick_attack(ckpt, out, *extra):
    """A small, fast Alg. 2 run on digits."""
    return ["attack", "--dataset", "digits", "--checkpoint", ckpt, "--out", out, "--quiet", "--eps", "32",
            "--attack-size", "256", "--epochs", "2", "--batch-size", "64", "--eval-size", "200", *extra]


# ---------------------------------------------------------------------------------------------
# crafted bad inputs (built once)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")

    def ckpt(name, arch, classes, channels, meta_arch=None, nan=False):
        torch.manual_seed(0)
        model = build_model(arch, classes, channels, [0.5] * channels, [0.25] * channels)
        if nan:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        meta = model_meta(meta_arch or arch, "digits" if channels == 1 else "cifar10",
                          [str(i) for i in range(classes)], channels, 32, [0.5] * channels, [0.25] * channels)
        return save_checkpoint(d / name, model, meta)

    files = {
        "rgb": ckpt("rgb.pt", "resnet20", 10, 3),                 # CIFAR-shaped: 3-channel images
        "five": ckpt("five.pt", "smallcnn", 5, 1),                # 5 classes, digits has 10
        "lie": ckpt("lie.pt", "smallcnn", 10, 1, meta_arch="resnet20"),   # weights of another architecture
        "nan": ckpt("nan.pt", "smallcnn", 10, 1, nan=True),       # its forward gives NaN
        "corrupt": d / "corrupt.pt", "foreign": d / "foreign.pt", "text": d / "model.txt",
        "empty_dir": d / "empty", "delta_rgb": d / "delta_rgb.pt", "delta_nan": d / "delta_nan.npy",
        "delta_bad": d / "delta_bad.pt",
    }
    data = DIGITS_NATURAL.read_bytes()
    files["corrupt"].write_bytes(data[: len(data) // 3])
    torch.save({"weights": torch.ones(3)}, files["foreign"])
    files["text"].write_text("not a model\n")
    files["empty_dir"].mkdir()
    torch.save(torch.zeros(3, 32, 32), files["delta_rgb"])
    np.save(files["delta_nan"], np.full((1, 32, 32), np.nan, np.float32))
    files["delta_bad"].write_bytes(b"\x80\x02garbage")
    return files


ATTACK_BAD = [
    # (extra args, words the message must contain)
    (["--eps", "0"], ["eps"]), (["--eps", "-8"], ["eps"]), (["--eps", "256"], ["eps"]), (["--eps", "nan"], ["eps"]),
    (["--beta", "0"], ["beta"]), (["--beta", "-1"], ["beta"]), (["--beta", "abc"], ["beta"]),
    (["--optimizer", "rmsprop"], ["optimizer"]), (["--optimizer", "rmsprop", "--method", "idf"], ["optimizer"]),
    (["--norm", "l1"], ["norm"]), (["--norm", "l1", "--method", "idf"], ["norm"]),
    (["--method", "fgsm"], ["method"]), (["--dataset", "mnist"], ["dataset"]),
    (["--target", "10"], ["target"]), (["--target", "-1"], ["target"]),
    (["--method", "idf", "--target", "3"], ["target"]),
    (["--attack-size", "0"], ["attack-size"]), (["--eval-size", "0"], ["eval-size"]),
    (["--epochs", "0"], ["epochs"]), (["--batch-size", "0"], ["batch"]), (["--step-size", "-1"], ["step"]),
    (["--step-decay", "2"], ["decay"]), (["--xi", "0", "--method", "idf"], ["xi"]),
    (["--snapshot-every", "-1"], ["snapshot"]), (["--eps", "abc"], ["--eps"]), (["--no-such-flag"], ["no-such-flag"]),
]


@pytest.mark.parametrize("extra,words", ATTACK_BAD, ids=[" ".join(a) for a, _ in ATTACK_BAD])
def test_attack_bad_arguments(cli, tmp_path, extra, words):
    out = tmp_path / "out"
    rc, _, err = cli(*quick_attack(DIGITS_NATURAL, out), *extra)
    assert_user_error(rc, err, *words)
    assert not out.exists()                                   # refused before any work or any file


@pytest.mark.parametrize("which,words", [
    ("rgb", ["channel"]), ("five", ["classes"]), ("lie", ["resnet20"]), ("corrupt", ["not a readable"]),
    ("foreign", ["not a uat lab"]), ("text", ["not a readable"]), ("empty_dir", ["folder"]),
    ("missing", ["not found"]),
])
def test_attack_bad_checkpoints(cli, tmp_path, bad_files, which, words):
    out = tmp_path / "out"
    ckpt = bad_files.get(which, tmp_path / "missing.pt")
    rc, _, err = cli(*quick_attack(ckpt, out))
    assert_user_error(rc, err, *words)
    assert not out.exists()


def test_empty_data_folders_are_refused(cli, tmp_path, bad_files, isolated_cache):
    out = tmp_path / "out"
    rc, _, err = cli(*quick_attack(DIGITS_NATURAL, out), "--dataset", f"imagefolder:{bad_files['empty_dir']}")
    assert_user_error(rc, err, "no images")
    rc, _, err = cli(*quick_attack(bad_files["rgb"], out), "--dataset", "cifar10",
                     "--data-root", bad_files["empty_dir"])
    assert_user_error(rc, err, "cifar-10")
    assert not out.exists()                                   # a data error leaves no empty --out folder
    rc, _, err = cli("eval", "--dataset", f"imagefolder:{bad_files['empty_dir']}", "--checkpoint", DIGITS_NATURAL,
                     "--perturbation", DIGITS_DELTA, "--out", out, "--quiet")
    assert_user_error(rc, err, "no images")
    assert not out.exists()


@pytest.mark.parametrize("which,words", [("delta_rgb", ["shape"]), ("delta_nan", ["nan"]),
                                         ("delta_bad", ["not a readable"]), ("missing", ["not found"])])
def test_eval_bad_perturbations(cli, tmp_path, bad_files, which, words):
    out = tmp_path / "out"
    delta = bad_files.get(which, tmp_path / "nothing.pt")
    rc, _, err = cli("eval", "--dataset", "digits", "--checkpoint", DIGITS_NATURAL, "--perturbation", delta,
                     "--out", out, "--quiet")
    assert_user_error(rc, err, *words)
    assert not out.exists()


@pytest.mark.parametrize("argv,words", [
    (["eval", "--checkpoint", "five", "--perturbation", "ok"], ["classes"]),
    (["eval", "--checkpoint", "rgb", "--perturbation", "ok"], ["channel"]),
    (["eval", "--checkpoint", "ok", "--perturbation", "ok", "--dataset", "svhn"], ["dataset"]),
    (["eval", "--checkpoint", "ok", "--perturbation", "ok", "--eval-size", "0"], ["eval-size"]),
    (["train", "--model", "vgg99"], ["model"]),
    (["train", "--model", "smallcnn", "--dataset", "mnist"], ["dataset"]),
    (["train", "--algorithm", "bogus"], ["algorithm"]),
    (["train", "--eps", "0", "--algorithm", "uat"], ["eps"]),
    (["train", "--eps", "256", "--algorithm", "uat"], ["eps"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_other_bad_commands(cli, tmp_path, bad_files, argv, words):
    out = tmp_path / "out"
    sub = {"five": bad_files["five"], "rgb": bad_files["rgb"], "ok": None}
    args = []
    for a in argv:
        if a in sub:
            a = sub[a] or (DIGITS_NATURAL if args[-1] == "--checkpoint" else DIGITS_DELTA)
        args.append(a)
    if argv[0] != "frobnicate":
        args += ["--out", out, "--quiet"]
    rc, _, err = cli(*args)
    assert_user_error(rc, err, *words)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_asking_for_a_missing_gpu_is_a_user_error(cli, tmp_path):
    rc, _, err = cli(*quick_attack(DIGITS_NATURAL, tmp_path / "out"), "--device", "cuda")
    assert_user_error(rc, err, "cuda")


def test_nan_model_stops_the_attack_and_nothing_is_written(cli, tmp_path, bad_files):
    out = tmp_path / "out"
    for method in ("alg2", "idf"):
        rc, _, err = cli(*quick_attack(bad_files["nan"], out), "--method", method)
        assert_user_error(rc, err, "nan")
        assert not out.exists()                               # no NaN δ (and no metrics) on disk
    rc, _, err = cli("eval", "--dataset", "digits", "--checkpoint", bad_files["nan"], "--perturbation", DIGITS_DELTA,
                     "--out", out, "--quiet")                 # eval used to exit 0 with meaningless figures
    assert_user_error(rc, err, "nan or inf weights")
    assert not out.exists()


def test_a_folder_without_a_test_split_says_test_accuracy_is_on_the_attack_images(cli, tmp_path, bad_files,
                                                                                   isolated_cache):
    root = tmp_path / "tree"
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (36, 36), (25 * c, 60 * i, 100)).save(root / f"class{c}" / f"{i}.png")
    out = tmp_path / "out"
    rc, _, err = cli(*quick_attack(bad_files["rgb"], out), "--dataset", f"imagefolder:{root}", "--image-size", "32")
    assert rc == 0, err
    assert "no separate train and test" in err and "same images the attack is built on" in err
    assert json.loads((out / "metrics.json").read_text())["test_is_attack_set"] is True


def test_out_below_an_existing_file_is_a_user_error(cli, tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    rc, _, err = cli(*quick_attack(DIGITS_NATURAL, blocker / "run"))
    assert_user_error(rc, err, "is a file")
    rc, _, err = cli("eval", "--dataset", "digits", "--checkpoint", DIGITS_NATURAL, "--perturbation", DIGITS_DELTA,
                     "--out", blocker / "a" / "b", "--quiet")
    assert_user_error(rc, err, "is a file")
    assert blocker.read_text() == "not a folder\n"


def test_ctrl_c_during_an_attack_exits_130_and_writes_nothing(cli, tmp_path, monkeypatch):
    from uat_core.engine.attacks.universal import UniversalAttack

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(UniversalAttack, "run", interrupted)
    out = tmp_path / "out"
    rc, _, err = cli(*quick_attack(DIGITS_NATURAL, out))
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert files_under(out) == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_keep_the_users_umask(tmp_path, umask):
    import os

    from uat_core.engine.fileio import atomic_bytes, write_json
    old = os.umask(umask)
    try:
        a = write_json(tmp_path / "m.json", {"x": 1})
        b = atomic_bytes(tmp_path / "g.png", b"png")
    finally:
        os.umask(old)
    for f in (a, b):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, oct(f.stat().st_mode)


def test_a_gpu_index_beyond_the_cards_is_a_user_error(monkeypatch):
    from uat_core.engine.device import pick_device
    from uat_core.engine.errors import UATError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UATError, match=r"only 1 CUDA GPU \(cuda:0\)"):
        pick_device("cuda:9")


# ---------------------------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------------------------

def test_every_option_of_every_command_has_help(cli):
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subs) == {"train", "attack", "eval", "zoo"}
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, \
                f"{name} {action.option_strings} has no help"
        rc, out, _ = cli(name, "--help")
        assert rc == 0
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in out, (name, flag)
    rc, out, _ = cli("--help")
    assert rc == 0 and "attack" in out and "examples" in out
    rc, out, _ = cli("zoo", "--help")                     # the zoo's own commands, through the same entry point
    assert rc == 0 and all(c in out for c in ("build", "report", "reattack", "list"))


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_attack_contract_and_no_overwrite(cli, tmp_path, digits_model):
    out = tmp_path / "att"
    argv = quick_attack(DIGITS_NATURAL, out, "--snapshot-every", "3")
    rc, stdout, err = cli(*argv)
    assert rc == 0, err
    assert files_under(out) == ATTACK_FILES and "perturbed top-1" in stdout

    delta = torch.load(out / "perturbation.pt", weights_only=True)
    assert isinstance(delta, torch.Tensor) and delta.shape == (1, 32, 32) and delta.dtype == torch.float32
    eps = 32 / 255
    assert float(delta.abs().max()) <= eps * (1 + 1e-6) and float(delta.abs().max()) > eps / 2
    assert np.array_equal(np.load(out / "perturbation.npy"), delta.numpy())

    png = np.asarray(Image.open(out / "perturbation.png"))
    assert png.shape == (32 * 8, 32 * 8)
    for i, j in [(0, 0), (10, 20), (31, 5)]:
        assert abs(int(png[8 * i + 4, 8 * j + 4]) - round((float(delta[0, i, j]) / (2 * eps) + 0.5) * 255)) <= 1

    m = json.loads((out / "metrics.json").read_text())
    for key in ("clean_top1", "perturbed_top1", "clean_top5", "perturbed_top5", "fooling_ratio", "eps",
                "seconds", "history"):
        assert key in m, key
    assert m["eps"] == 32 and m["seconds"] > 0 and m["method"] == "alg2"
    steps = 2 * math.ceil(256 / 64)
    assert len(m["history"]) == steps and m["history"][-1]["step"] == steps

    gif = Image.open(out / "perturbation.gif")
    # snapshots at steps 3, 6 and the last; Pillow merges identical consecutive frames, so "at most"
    assert 2 <= gif.n_frames <= len(range(3, steps + 1, 3)) + (steps % 3 != 0)
    gif.seek(gif.n_frames - 1)
    last = np.asarray(gif.convert("L"), dtype=int)
    assert np.abs(last - png.astype(int)).max() <= 2         # last frame = final δ, same scale as the PNG

    # the numbers in metrics.json are what evaluate() gives for the saved δ on the same test slice
    test = load_dataset("digits", "test", limit=200, seed=0, progress=False)
    ref = evaluate(digits_model, test.images, test.labels, delta)
    for key in ("clean_top1", "perturbed_top1", "clean_top5", "perturbed_top5", "fooling_ratio"):
        assert m[key] == pytest.approx(ref[key], abs=1e-6), key
    assert m["clean_top1"] > 0.95 and m["perturbed_top1"] < m["clean_top1"] - 0.2

    # no overwrite without --force; nothing is touched
    before = {n: (out / n).read_bytes() for n in ATTACK_FILES}
    rc, _, err = cli(*argv)
    assert_user_error(rc, err, "already exists", "--force")
    assert {n: (out / n).read_bytes() for n in ATTACK_FILES} == before
    rc, _, err = cli(*argv, "--force", "--seed", "1")
    assert rc == 0, err
    assert (out / "perturbation.pt").read_bytes() != before["perturbation.pt"]
    assert files_under(out) == ATTACK_FILES                     # no temporary files left behind


@pytest.mark.slow
def test_idf_method_and_eval_transfer(cli, tmp_path):
    out = tmp_path / "idf"
    rc, _, err = cli("attack", "--dataset", "digits", "--checkpoint", DIGITS_NATURAL, "--out", out, "--quiet",
                     "--method", "idf", "--eps", "32", "--attack-size", "64", "--epochs", "1", "--batch-size", "64",
                     "--eval-size", "100")
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "idf" and m["config"]["backwards"] > 0
    assert m["perturbed_top1"] < m["clean_top1"] - 0.2
    delta = torch.load(out / "perturbation.pt", weights_only=True)
    assert delta.shape == (1, 32, 32) and float(delta.abs().max()) <= 32 / 255 * (1 + 1e-6)

    # eval: the shipped natural model's δ transferred to the shipped UAT model
    ev = tmp_path / "transfer"
    rc, _, err = cli("eval", "--dataset", "digits", "--checkpoint", DIGITS_UAT, "--perturbation", DIGITS_DELTA,
                     "--out", ev, "--quiet")
    assert rc == 0, err
    assert files_under(ev) == ["grid.png", "metrics.json"]
    t = json.loads((ev / "metrics.json").read_text())
    model, _ = load_checkpoint(DIGITS_UAT)
    test = load_dataset("digits", "test", progress=False)
    ref = evaluate(model, test.images, test.labels, torch.load(DIGITS_DELTA, weights_only=True))
    for key in ("clean_top1", "perturbed_top1", "fooling_ratio"):
        assert t[key] == pytest.approx(ref[key], abs=1e-6), key
    assert t["eps"] == pytest.approx(32, abs=0.01)
    rc, _, err = cli("eval", "--dataset", "digits", "--checkpoint", DIGITS_UAT, "--perturbation", DIGITS_DELTA,
                     "--out", ev, "--quiet")
    assert_user_error(rc, err, "already exists")


@pytest.mark.slow
def test_train_then_attack_then_eval_on_digits(cli, tmp_path):
    """The whole path a student takes: train a model (3 epochs, seconds), attack it, evaluate a transfer."""
    run = tmp_path / "model"
    rc, _, err = cli("train", "--dataset", "digits", "--model", "smallcnn", "--epochs", "3", "--no-report",
                     "--out", run, "--quiet")
    assert rc == 0, err
    tm = json.loads((run / "metrics.json").read_text())
    assert tm["clean_top1"] > 0.8
    att = tmp_path / "attack"
    rc, _, err = cli("attack", "--dataset", "digits", "--checkpoint", run / "model.pt", "--eps", "32",
                     "--attack-size", "512", "--epochs", "3", "--out", att, "--quiet")
    assert rc == 0, err
    am = json.loads((att / "metrics.json").read_text())
    assert am["clean_top1"] == pytest.approx(tm["clean_top1"], abs=1e-6)    # same model, same test split
    assert am["perturbed_top1"] < am["clean_top1"] - 0.4
    ev = tmp_path / "eval"
    rc, _, err = cli("eval", "--dataset", "digits", "--checkpoint", DIGITS_NATURAL, "--perturbation",
                     att / "perturbation.npy", "--out", ev, "--quiet")
    assert rc == 0, err
    em = json.loads((ev / "metrics.json").read_text())
    assert 0 <= em["perturbed_top1"] <= em["clean_top1"] + 0.02 and em["n"] == 500


# ---------------------------------------------------------------------------------------------
# CIFAR-10 slice (CI has the copy)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cifar_checkpoint(tmp_path_factory) -> Path:
    """The zoo's natural ResNet-20 when the manifest has it, else a fresh (untrained) ResNet-20."""
    man = json.loads((ZOO / "manifest.json").read_text())["models"] if (ZOO / "manifest.json").is_file() else {}
    entry = man.get("cifar10_resnet20_natural")
    if entry and (ZOO / entry["file"]).is_file():
        return ZOO / entry["file"]
    from uat_core.engine.data import dataset_info
    info = dataset_info("cifar10")
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3, info["mean"], info["std"])
    meta = model_meta("resnet20", "cifar10", info["classes"], 3, 32, info["mean"], info["std"])
    return save_checkpoint(tmp_path_factory.mktemp("c10") / "fresh_resnet20.pt", model, meta)


@pytest.mark.slow
@pytest.mark.cifar
@needs_cifar
def test_cifar10_slice_attack_and_eval(cli, tmp_path, cifar_checkpoint, isolated_cache):
    out = tmp_path / "c10"
    rc, _, err = cli("attack", "--dataset", "cifar10", "--data-root", CIFAR_ROOT, "--checkpoint", cifar_checkpoint,
                     "--eps", "8", "--attack-size", "64", "--epochs", "1", "--batch-size", "32",
                     "--eval-size", "200", "--out", out, "--quiet")
    assert rc == 0, err
    assert files_under(out) == ATTACK_FILES
    delta = torch.load(out / "perturbation.pt", weights_only=True)
    assert delta.shape == (3, 32, 32) and float(delta.abs().max()) <= 8 / 255 * (1 + 1e-6)
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval_size"] == 200 and m["attack_size"] == 64 and len(m["history"]) == 2
    test = load_dataset("cifar10", "test", CIFAR_ROOT, limit=200, seed=0, progress=False)
    model, _ = load_checkpoint(cifar_checkpoint)
    ref = evaluate(model, test.images, test.labels, delta)
    assert m["perturbed_top1"] == pytest.approx(ref["perturbed_top1"], abs=1e-6)
    assert m["clean_top1"] == pytest.approx(ref["clean_top1"], abs=1e-6)
    if "fresh" not in cifar_checkpoint.name:                  # a trained model: the attack must bite
        assert m["perturbed_top1"] < m["clean_top1"]

    ev = tmp_path / "c10eval"
    rc, _, err = cli("eval", "--dataset", "cifar10", "--data-root", CIFAR_ROOT, "--checkpoint", cifar_checkpoint,
                     "--perturbation", out / "perturbation.pt", "--eval-size", "200", "--out", ev, "--quiet")
    assert rc == 0, err
    assert json.loads((ev / "metrics.json").read_text())["perturbed_top1"] == pytest.approx(m["perturbed_top1"])
    # a digits δ does not fit CIFAR-10 images
    rc, _, err = cli("eval", "--dataset", "cifar10", "--data-root", CIFAR_ROOT, "--checkpoint", cifar_checkpoint,
                     "--perturbation", DIGITS_DELTA, "--out", tmp_path / "x", "--quiet")
    assert_user_error(rc, err, "shape")

"""Shared fixtures for the engine's tests.

Everything here is cheap and session-scoped: the digits data (scikit-learn, offline, instant) and the
shipped digits model ``assets/models/digits_smallcnn_natural.pt`` (99% clean), so no test has to train
a model unless training is what it checks. CIFAR-10 tests use the copy at ``../shared/data/cifar10-jpeg``
(or ``$UAT_DATA``) and are skipped when it is missing.

Markers: ``slow`` (a few seconds or more of CPU), ``cifar`` (needs the CIFAR-10 copy).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # plain `pytest` (not `python -m pytest`) from anywhere
    sys.path.insert(0, str(ROOT))

ZOO = ROOT / "assets" / "models"
DIGITS_NATURAL = ZOO / "digits_smallcnn_natural.pt"
CIFAR_ROOT = Path(os.environ.get("UAT_DATA") or ROOT.parent / "shared/data/cifar10-jpeg")
HAS_CIFAR = (CIFAR_ROOT / "test").is_dir() and (CIFAR_ROOT / "train").is_dir()
needs_cifar = pytest.mark.skipif(not HAS_CIFAR, reason=f"no CIFAR-10 ImageFolder copy at {CIFAR_ROOT}")


# The README's test command (`python -m pytest`) runs the notebooks too (nbmake, testpaths in pyproject.toml):
# their kernels inherit this environment, so they run in fast mode (digits, tiny sets: seconds each) unless
# UAT_FAST is set otherwise. Without this they ran at full size, on CIFAR-10 whenever $UAT_DATA was set.
os.environ.setdefault("UAT_FAST", "1")


def pytest_configure(config):
    # The tests use small batches, where a second intra-op thread gains little, while on a shared or busy
    # runner two spinning OpenMP threads per process slow everything down several times over. One thread
    # also makes float reductions identical from machine to machine. UAT_TEST_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("UAT_TEST_THREADS", "1")))
    config.addinivalue_line("markers", "slow: takes a few seconds or more of CPU")
    config.addinivalue_line("markers", "cifar: needs the CIFAR-10 copy (skipped when it is missing)")


@pytest.fixture(scope="session")
def digits_train():
    """scikit-learn digits, train split: 1297 images (1,32,32) uint8."""
    from uat_core.engine.data import load_dataset
    return load_dataset("digits", "train", progress=False)


@pytest.fixture(scope="session")
def digits_test():
    """scikit-learn digits, test split: 500 images (1,32,32) uint8."""
    from uat_core.engine.data import load_dataset
    return load_dataset("digits", "test", progress=False)


@pytest.fixture(scope="session")
def digits_model():
    """The shipped naturally trained SmallCNN for digits (eval mode, CPU). Tests must not change its weights."""
    from uat_core.engine.checkpoint import load_checkpoint
    if not DIGITS_NATURAL.is_file():
        pytest.skip(f"{DIGITS_NATURAL} is missing")
    model, _ = load_checkpoint(DIGITS_NATURAL, {"num_classes": 10, "shape": (1, 32, 32)})
    return model


@pytest.fixture(scope="session")
def digits_clean_top1(digits_model, digits_test) -> float:
    """Clean top-1 of the shipped model on the whole digits test split (a reference for attack tests)."""
    from uat_core.engine.evaluation import evaluate
    return evaluate(digits_model, digits_test.images, digits_test.labels)["clean_top1"]


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Keep decoded-image caches and downloads out of the user's real cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache"


@pytest.fixture
def cli(capsys):
    """Run ``python -m uat_core ARGS`` in-process: returns (exit code, stdout, stderr)."""
    from uat_core.cli import main

    def run(*argv) -> tuple[int, str, str]:
        capsys.readouterr()                       # drop anything printed before
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:                   # argparse's own exits (--help)
            rc = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return rc, out.out, out.err
    return run


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (relative paths, sorted); [] when the folder does not exist."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def fake_cifar10_archive(folder: Path, per_batch: int = 2) -> tuple[Path, dict[str, str], dict[str, torch.Tensor]]:
    """A tiny stand-in for torchvision's ``cifar-10-python.tar.gz`` (no network in the tests): the same layout,
    ``cifar-10-batches-py/`` with the five training batches, the test batch and ``batches.meta``, pickled as
    torchvision reads them, ``per_batch`` images each. Returns (the archive, {file name: MD5} of the files in it,
    {"train"|"test": the (N, 3, 32, 32) uint8 images they hold})."""
    import hashlib
    import pickle
    import tarfile

    import numpy as np

    src = Path(folder) / "fake-cifar" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    images: dict[str, list] = {"train": [], "test": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        data = np.random.default_rng(b).integers(0, 256, (per_batch, 3072), dtype=np.uint8)   # (N, 3*32*32)
        labels = [(b + i) % 10 for i in range(per_batch)]
        (src / name).write_bytes(pickle.dumps({"batch_label": name, "data": data, "labels": labels}))
        images["test" if name == "test_batch" else "train"].append(torch.from_numpy(data).reshape(-1, 3, 32, 32))
    (src / "batches.meta").write_bytes(pickle.dumps({"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                                                     "dog", "frog", "horse", "ship", "truck"]}))
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in src.iterdir()}
    archive = Path(folder) / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    return archive, md5, {k: torch.cat(v) for k, v in images.items()}

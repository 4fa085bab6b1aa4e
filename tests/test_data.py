"""Tests for uat_core.engine.data: in-memory uint8 datasets (digits, image folders, CIFAR-10)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from uat_core.engine import data as D
from uat_core.engine.data import ImageData, dataset_info, load_dataset, resolve_data_root
from uat_core.engine.errors import UATError

CIFAR_ROOT = Path(os.environ.get("UAT_DATA") or
                  Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpeg")
needs_cifar = pytest.mark.skipif(not (CIFAR_ROOT / "test").is_dir(),
                                 reason=f"no CIFAR-10 ImageFolder copy at {CIFAR_ROOT}")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep every test's decoded cache and downloads out of the real user cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="module")
def digits() -> tuple[ImageData, ImageData]:
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------

def test_digits_shapes_and_sizes(digits):
    train, test = digits
    assert (len(train), len(test)) == (1297, 500)
    for d in digits:
        assert d.shape == (1, 32, 32) and d.images.shape[1:] == (1, 32, 32)
        assert d.images.dtype == torch.uint8 and d.labels.dtype == torch.int64
        assert int(d.labels.min()) >= 0 and int(d.labels.max()) <= 9
        assert d.classes == [str(i) for i in range(10)] and d.num_classes == 10
        assert d.name == "digits" and "digits" in d.source
    assert (train.split, test.split) == ("train", "test")


def test_digits_deterministic_partition(digits):
    from sklearn.datasets import load_digits

    train, test = digits
    again = load_dataset("digits", "train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    # The splits partition the 1797 samples: per-class counts add up to the full set's.
    full = torch.as_tensor(load_digits().target)
    assert len(train) + len(test) == full.numel() == 1797
    assert torch.equal(train.labels.bincount(minlength=10) + test.labels.bincount(minlength=10),
                       full.bincount(minlength=10))


def test_digits_normalization_matches_train_statistics(digits):
    x = digits[0].float_images()                              # (1297, 1, 32, 32)
    assert x.mean().item() == pytest.approx(D.DIGITS_MEAN[0], abs=6e-5)
    assert x.std(unbiased=False).item() == pytest.approx(D.DIGITS_STD[0], abs=6e-5)


def test_float_images(digits):
    train = digits[0]
    x = train.float_images()
    assert x.dtype == torch.float32 and x.shape == (1297, 1, 32, 32)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    assert train.float_images(slice(0, 5)).shape == (5, 1, 32, 32)
    assert train.float_images(torch.tensor([3, 1])).shape == (2, 1, 32, 32)
    assert torch.equal(train.float_images(-1), x[-1:])
    assert train.images.dtype == torch.uint8                  # no float copy kept


def test_subset_deterministic_and_stratified(digits):
    train = digits[0]
    a, b = train.subset(100, seed=3), train.subset(100, seed=3)
    assert len(a) == 100 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, train.subset(100, seed=4).images)
    share = train.labels.bincount(minlength=10).double() * 100 / len(train)
    assert (a.labels.bincount(minlength=10).double() - share).abs().max() < 1.0
    plain = train.subset(100, seed=3, stratified=False)
    assert len(plain) == 100 and plain.classes == train.classes
    assert train.subset(None) is train and train.subset(len(train)) is train
    assert train.subset(10**6) is train
    with pytest.raises(UATError):
        train.subset(0)


def test_limit_equals_subset(digits):
    limited = load_dataset("digits", "test", limit=50, seed=7)
    assert torch.equal(limited.images, digits[1].subset(50, seed=7).images)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.integers(1, 60), st.integers(0, 99))
def test_select_indices_properties(labels, n, seed):
    labels = torch.tensor(labels)
    idx = D.select_indices(labels, n, seed)
    assert idx.numel() == min(n, labels.numel())
    assert torch.equal(idx, idx.unique())                     # sorted, no repeats
    share = labels.bincount(minlength=5).double() * idx.numel() / labels.numel()
    assert (labels[idx].bincount(minlength=5).double() - share).abs().max() < 1.0


def test_batches(digits):
    test = digits[1]
    seen = []
    for x, y in test.batches(64, shuffle=True, seed=1):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 32, 32)
        assert float(x.max()) <= 1.0
        seen.append(y)
    assert sum(len(y) for y in seen) == 500
    # Each sample exactly once: matching a row back to the dataset through the label sequence.
    order = torch.randperm(500, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat(seen), test.labels[order])
    sizes = [len(y) for _, y in test.batches(64, drop_last=True)]
    assert sizes == [64] * (500 // 64)
    x0, _ = next(test.batches(8))
    assert torch.equal(x0, test.float_images(slice(0, 8)))
    with pytest.raises(UATError):
        next(test.batches(0))


# --------------------------------------------------------------------------------------------
# imagefolder
# --------------------------------------------------------------------------------------------

def make_tree(root: Path, classes=("cats", "dogs"), per_class: int = 3) -> Path:
    """A tiny class-folder tree of PNGs with different sizes and colours."""
    sizes = [(40, 30), (25, 50), (64, 64)]
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", sizes[i % 3], (80 * c, 40 * i, 200)).save(root / name / f"im{i}.png")
    return root


def test_imagefolder_loads_and_resizes(tmp_path):
    root = make_tree(tmp_path / "pets")
    d = load_dataset(f"imagefolder:{root}", "train", image_size=32)
    assert d.images.shape == (6, 3, 32, 32) and d.images.dtype == torch.uint8
    assert d.classes == ["cats", "dogs"] and d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.mean == D.IMAGENET_MEAN and d.name == f"imagefolder:{root}"
    # Uniform colour survives resizing: first "dogs" image is (80, 0, 200).
    assert d.images[3, :, 16, 16].tolist() == [80, 0, 200]
    # No train/test inside: both splits use every image.
    assert len(load_dataset(f"imagefolder:{root}", "test", image_size=32)) == 6
    info = dataset_info(f"imagefolder:{root}", image_size=32)
    assert info["shape"] == d.shape and info["classes"] == d.classes and info["num_classes"] == 2
    assert dataset_info(f"imagefolder:{root}")["shape"] == (3, 224, 224)


def test_imagefolder_train_test_layout_and_limit(tmp_path):
    root = tmp_path / "split"
    make_tree(root / "train", per_class=3)
    make_tree(root / "val", per_class=2)
    train = load_dataset(f"imagefolder:{root}", "train", image_size=16)
    test = load_dataset(f"imagefolder:{root}", "test", image_size=16)
    assert (len(train), len(test)) == (6, 4) and test.classes == ["cats", "dogs"]
    limited = load_dataset(f"imagefolder:{root}", "train", image_size=16, limit=2, seed=5)
    assert limited.labels.tolist() == [0, 1]
    assert torch.equal(limited.images, train.subset(2, seed=5).images)


def test_imagefolder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UATError) as e:
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    assert "no images found" in one_line_error(e)
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(UATError, match="no images found"):
        load_dataset(f"imagefolder:{tmp_path / 'noimg'}")
    with pytest.raises(UATError, match="no images found"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    with pytest.raises(UATError):
        dataset_info(f"imagefolder:{tmp_path / 'missing'}")
    root = make_tree(tmp_path / "bad")
    (root / "dogs" / "broken.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(UATError) as e:
        load_dataset(f"imagefolder:{root}", image_size=32)
    assert "broken.jpg" in one_line_error(e)


def test_imagefolder_16bit_pngs_resource_forks_and_bombs(tmp_path, capsys):
    import numpy as np
    root = tmp_path / "odd"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    grey16 = np.full((32, 32), 32768, np.uint16)                    # mid grey in 16 bits
    grey16[:, 16:] = 65535
    Image.fromarray(grey16).save(root / "a" / "g16.png")
    Image.new("RGB", (32, 32), (10, 20, 30)).save(root / "b" / "rgb.png")
    (root / "b" / "._rgb.png").write_bytes(b"\x00\x05\x16\x07 resource fork")   # macOS metadata, not an image
    (root / "b" / ".DS_Store").write_bytes(b"junk")
    (root / "b" / "readme.txt").write_text("notes")
    d = load_dataset(f"imagefolder:{root}", "train", image_size=32)
    assert len(d) == 2 and d.labels.tolist() == [0, 1]
    a = d.images[0]                                                  # (3, 32, 32): 16-bit scaled, not clipped
    assert a[:, 5, 2].tolist() == [128, 128, 128] and a[:, 5, 28].tolist() == [255, 255, 255]
    assert "skipped 3 file(s)" in capsys.readouterr().err
    Image.new("1", (8000, 6000)).save(root / "a" / "bomb.png")       # 48 M pixels in a few KB
    with pytest.raises(UATError, match=r"bomb.png is 8000×6000 pixels, above the 40 M pixel limit"):
        load_dataset(f"imagefolder:{root}", "train", image_size=32)


def test_unknown_names_and_splits():
    for bad in ("mnist", "imagenet", ""):
        with pytest.raises(UATError) as e:
            load_dataset(bad)
        assert "cifar10, digits or imagefolder:<path>" in one_line_error(e)
        with pytest.raises(UATError):
            dataset_info(bad)
    with pytest.raises(UATError, match="split"):
        load_dataset("digits", "val")
    with pytest.raises(UATError):
        load_dataset("digits", limit=0)


def test_decoded_cache(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "pets")
    monkeypatch.setattr(D, "_CACHE_MIN_FILES", 1)
    first = load_dataset(f"imagefolder:{root}", image_size=32)
    cached = list((tmp_path / "xdg-cache" / "uat_lab" / "decoded").glob("*.pt"))
    assert len(cached) == 1

    def no_decoding(path):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(D, "decode_file", no_decoding)
    again = load_dataset(f"imagefolder:{root}", image_size=32)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert torch.equal(load_dataset(f"imagefolder:{root}", image_size=32, limit=2).images,
                       first.subset(2).images)


def test_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "pets")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(D, "_CACHE_MIN_FILES", 1)
    assert len(load_dataset(f"imagefolder:{root}", image_size=8)) == 6


# --------------------------------------------------------------------------------------------
# cifar10
# --------------------------------------------------------------------------------------------

def test_resolve_data_root(monkeypatch):
    monkeypatch.delenv(D.DATA_ENV, raising=False)
    assert resolve_data_root(None) is None
    monkeypatch.setenv(D.DATA_ENV, "/some/where")
    assert resolve_data_root(None) == "/some/where"
    assert resolve_data_root("/explicit") == "/explicit"


@needs_cifar
def test_cifar10_imagefolder_copy_with_limit(monkeypatch):
    calls = []
    decode = D.decode_file
    monkeypatch.setattr(D, "decode_file", lambda p: calls.append(p) or decode(p))
    d = load_dataset("cifar10", "test", root=str(CIFAR_ROOT), limit=100, progress=False)
    assert len(calls) == 100                                  # files chosen before decoding
    assert d.images.shape == (100, 3, 32, 32) and d.images.dtype == torch.uint8
    assert d.classes[0] == "airplane" and d.num_classes == 10
    assert d.labels.bincount(minlength=10).tolist() == [10] * 10
    assert "ImageFolder" in d.source and d.mean == D.CIFAR10_MEAN
    info = dataset_info("cifar10")
    assert info["shape"] == d.shape and info["classes"] == d.classes


def test_cifar10_bad_roots(tmp_path):
    with pytest.raises(UATError) as e:
        load_dataset("cifar10", root=str(tmp_path / "nope"))
    assert "does not exist" in one_line_error(e)
    with pytest.raises(UATError) as e:
        load_dataset("cifar10", root=str(tmp_path))
    assert "no CIFAR-10" in one_line_error(e)
    for split in ("train", "test"):
        (tmp_path / "tree" / split / "apples").mkdir(parents=True)
    with pytest.raises(UATError) as e:
        load_dataset("cifar10", root=str(tmp_path / "tree"))
    assert "apples" in one_line_error(e)


def test_cifar10_torchvision_root(tmp_path, monkeypatch):
    import numpy as np
    import torchvision.datasets

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            assert Path(root) == tmp_path and not download
            n = 30 if train else 20
            self.data = np.full((n, 32, 32, 3), 7, dtype=np.uint8)   # (N, H, W, C)
            self.data[:, 0, 0] = (1, 2, 3)
            self.targets = [i % 10 for i in range(n)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    (tmp_path / "cifar-10-batches-py").mkdir()
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        d = load_dataset("cifar10", "test", root=str(root))
        assert d.images.shape == (20, 3, 32, 32) and d.images[0, :, 0, 0].tolist() == [1, 2, 3]
    assert len(load_dataset("cifar10", "train", root=str(tmp_path), limit=10)) == 10


def test_cifar10_offline_download_fails_cleanly(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.delenv(D.DATA_ENV, raising=False)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UATError) as e:
        load_dataset("cifar10", "train", root=None)
    assert "--data-root" in one_line_error(e) and "UAT_DATA" in str(e.value)


def test_dataset_info_matches_loaded(digits):
    info = dataset_info("digits")
    assert info["shape"] == digits[0].shape and info["num_classes"] == digits[0].num_classes
    assert info["mean"] == digits[0].mean and info["std"] == digits[0].std
    cifar = dataset_info("cifar10")
    assert cifar["shape"] == (3, 32, 32) and cifar["num_classes"] == 10
    assert cifar["classes"][0] == "airplane" and cifar["std"] == D.CIFAR10_STD


def test_cut_gives_the_stratified_subset_and_exactly_the_rest(digits_test):
    n = len(digits_test)
    ids = torch.zeros(n, 1, 2, 1, dtype=torch.uint8)                          # image i carries its index i
    ids[:, 0, 0, 0], ids[:, 0, 1, 0] = torch.arange(n) % 256, torch.arange(n) // 256
    tagged = ImageData(ids, digits_test.labels, list(digits_test.classes), "digits", "test", "", (0.5,), (0.5,))
    a, b = tagged.cut(250, seed=3)

    def index(d):
        return (d.images[:, 0, 0, 0].long() + 256 * d.images[:, 0, 1, 0].long()).tolist()
    assert index(a) == index(tagged.subset(250, 3))                            # the side subset() would pick
    assert sorted(index(a) + index(b)) == list(range(n))                      # disjoint and complete
    assert index(b) == sorted(index(b))                                        # in the original order
    counts_a, counts_b = torch.bincount(a.labels, minlength=10), torch.bincount(b.labels, minlength=10)
    assert (counts_a - counts_b).abs().max() <= 2                             # both halves stratified
    with pytest.raises(UATError, match="a cut needs"):
        tagged.cut(n)

"""Datasets as in-memory uint8 tensors.

Every dataset is decoded once into an :class:`ImageData`: a ``(N, C, H, W)`` uint8 image tensor
plus int64 labels. Float copies are only made per batch (``batches``) or on request
(``float_images``), so even the 50,000 CIFAR-10 training images take about 150 MB.

Three sources are supported:

* ``digits`` - scikit-learn's bundled 8x8 digits, upsampled to 1x32x32 (always offline).
* ``cifar10`` - an ImageFolder copy (``<root>/train|test/<class>/*.jpg``), a torchvision
  CIFAR-10 root (``cifar-10-batches-py``), or a torchvision download into the user cache.
* ``imagefolder:<path>`` - any folder of class subfolders, resized and center-cropped to
  ``image_size``.

Large ImageFolder splits are cached decoded in ``~/.cache/uat_lab/decoded/`` so that the second
load takes about a second.

A split too large to hold decoded (the ImageNet training images) is read from disk as it is needed instead:
``uat_core.engine.stream.FolderStream`` lists the same files in the same order (``class_files``), decodes them with
the same ``decode_file`` and, for evaluation, crops them with the same ``fit_image``, so that a streamed split and
its in-memory copy give the same images.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from uat_core.engine.errors import UATError

DATASETS = ("cifar10", "digits")  # plus "imagefolder:<path>"
DATA_ENV = "UAT_DATA"
SPLITS = ("train", "test")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# Per-channel statistics of the digits train split (1297 images, uint8/255); verified by the tests.
DIGITS_MEAN = (0.3050,)
DIGITS_STD = (0.3234,)
DIGITS_TRAIN = 1297  # of 1797; the remaining 500 are the test split
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_PIXELS = 40_000_000     # larger images are refused before decoding (decompression bombs)
_CACHE_MIN_FILES = 1000   # smaller folders decode in well under a second: not worth a cache file
_CACHE_VERSION = "1"      # bump when the decoded layout changes
_PROGRESS_MIN_FILES = 300
_OFFLINE_MSG = ("CIFAR-10 is not available offline: pass --data-root DIR or set UAT_DATA=DIR "
                "(an ImageFolder tree with train/ and test/, or a torchvision CIFAR-10 root), "
                "or use --dataset digits")


# --------------------------------------------------------------------------------------------
# ImageData
# --------------------------------------------------------------------------------------------

@dataclass
class ImageData:
    """One split of a dataset, fully decoded in memory.

    ``images`` is ``(N, C, H, W)`` uint8 and ``labels`` is ``(N,)`` int64. ``mean``/``std`` are the
    per-channel normalization a model wrapper should apply to ``[0, 1]`` inputs.
    """

    images: torch.Tensor      # (N, C, H, W) uint8
    labels: torch.Tensor      # (N,) int64
    classes: list[str]
    name: str                 # "cifar10" | "digits" | "imagefolder:<path>"
    split: str                # "train" | "test"
    source: str               # one plain sentence saying where the images came from
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(C, H, W)``."""
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def float_images(self, idx: torch.Tensor | slice | list[int] | int | None = None) -> torch.Tensor:
        """Images as float32 in ``[0, 1]``, shape ``(n, C, H, W)``; all of them when ``idx`` is None."""
        if idx is None:
            sel = self.images                       # (N, C, H, W)
        elif isinstance(idx, int):
            sel = self.images[idx:idx + 1 or None]  # keep the batch dimension: (1, C, H, W)
        else:
            sel = self.images[idx]                  # (n, C, H, W)
        return sel.float().div_(255.0)

    def subset(self, n: int | None, seed: int = 0, stratified: bool = True) -> ImageData:
        """A deterministic random subset of ``n`` samples, kept in their original order.

        ``n`` None or ``>= len(self)`` returns ``self``. With ``stratified`` every class keeps its
        share of the samples (largest-remainder rounding).
        """
        if n is None or n >= len(self):
            return self
        idx = select_indices(self.labels, n, seed, stratified)  # (n,) int64, sorted
        return ImageData(self.images[idx], self.labels[idx], list(self.classes), self.name,
                         self.split, self.source, self.mean, self.std)

    def cut(self, n: int, seed: int = 0) -> tuple[ImageData, ImageData]:
        """(the stratified subset :meth:`subset` picks, every other sample): two disjoint sets, each in the
        original order (for example a test split cut in halves, one to build an attack on, one to score it)."""
        if not isinstance(n, int) or not (1 <= n < len(self)):
            raise UATError(f"a cut needs 1 to {len(self) - 1} samples on its first side, got {n!r}")
        idx = select_indices(self.labels, n, seed, True)                   # (n,) sorted
        rest = torch.ones(len(self), dtype=torch.bool)
        rest[idx] = False

        def take(i):
            return ImageData(self.images[i], self.labels[i], list(self.classes), self.name, self.split,
                             self.source, self.mean, self.std)
        return take(idx), take(rest.nonzero().flatten())

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0,
                device: str | torch.device = "cpu", drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)``: x ``(b, C, H, W)`` float32 in ``[0, 1]`` and y ``(b,)`` int64, on ``device``.

        The uint8 -> float conversion happens per batch, on the device (4x less to transfer).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UATError(f"batch size must be a positive integer, got {batch_size!r}")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))  # (N,)
        else:
            order = torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if drop_last and idx.numel() < batch_size:
                break
            x = self.images[idx].to(device, non_blocking=True).float().div_(255.0)  # (b, C, H, W)
            y = self.labels[idx].to(device, non_blocking=True)                       # (b,)
            yield x, y


def select_indices(labels: torch.Tensor, n: int, seed: int, stratified: bool = True) -> torch.Tensor:
    """Sorted indices of a seeded random choice of ``n`` of ``labels`` (``(N,)`` int64).

    Used both by :meth:`ImageData.subset` and to pick files before decoding, so that
    ``load_dataset(..., limit=n)`` equals ``load_dataset(...).subset(n)``.
    """
    if not isinstance(n, int) or n < 1:
        raise UATError(f"subset size must be a positive integer, got {n!r}")
    total = int(labels.shape[0])
    g = torch.Generator().manual_seed(seed)
    if n >= total:
        return torch.arange(total)
    if not stratified:
        return torch.randperm(total, generator=g)[:n].sort().values
    classes, counts = torch.unique(labels, return_counts=True)        # (K,), (K,)
    exact = counts.double() * n / total                                # ideal share per class
    quota = exact.floor().long()                                       # (K,)
    # Hand the remaining samples to the largest fractional parts (ties: lower class first).
    remainder = n - int(quota.sum())
    frac_order = torch.sort(exact - quota, descending=True, stable=True).indices
    quota[frac_order[:remainder]] += 1
    picked = []
    for cls, q in zip(classes.tolist(), quota.tolist()):
        members = (labels == cls).nonzero().flatten()                  # (count,)
        picked.append(members[torch.randperm(members.numel(), generator=g)[:q]])
    return torch.cat(picked).sort().values


# --------------------------------------------------------------------------------------------
# Names, roots and cache folders
# --------------------------------------------------------------------------------------------

def resolve_data_root(root: str | None) -> str | None:
    """The data root to use: ``root`` if given, else ``$UAT_DATA`` if set, else None."""
    if root:
        return str(root)
    return os.environ.get(DATA_ENV) or None


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/uat_lab``, or ``~/.cache/uat_lab``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "uat_lab"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UATError(f"unknown split {split!r}: choose train or test")


def _unknown(name: str) -> UATError:
    return UATError(f"unknown dataset {name!r}: choose cifar10, digits or imagefolder:<path>")


def imagefolder_path(name: str) -> Path:
    """The folder of an ``imagefolder:<path>`` name (checked to exist)."""
    raw = name.split(":", 1)[1].strip()
    path = Path(os.path.expanduser(raw))
    if not raw or not path.is_dir():
        raise UATError(f"no images found in {path}: expected {path}/<class>/<image>.jpg")
    return path


def dataset_info(name: str, image_size: int = 224) -> dict:
    """Shape, classes and normalization of a dataset without decoding any image.

    For ``imagefolder:<path>`` only the class folder names are read; the shape is
    ``(3, image_size, image_size)``.
    """
    if name == "cifar10":
        return {"shape": (3, 32, 32), "num_classes": 10, "classes": list(CIFAR10_CLASSES),
                "mean": CIFAR10_MEAN, "std": CIFAR10_STD}
    if name == "digits":
        return {"shape": (1, 32, 32), "num_classes": 10, "classes": [str(d) for d in range(10)],
                "mean": DIGITS_MEAN, "std": DIGITS_STD}
    if name.startswith("imagefolder:"):
        path = imagefolder_path(name)
        classes = class_names(imagefolder_split_dir(path, "train"))
        if not classes:
            raise UATError(f"no images found in {path}: expected {path}/<class>/<image>.jpg")
        return {"shape": (3, image_size, image_size), "num_classes": len(classes),
                "classes": classes, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    raise _unknown(name)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def load_dataset(name: str, split: str = "train", root: str | None = None, limit: int | None = None,
                 seed: int = 0, image_size: int = 224, download: bool = True,
                 progress: bool = True) -> ImageData:
    """Load one split of a dataset as an :class:`ImageData`.

    ``limit`` keeps a deterministic, class-stratified random subset (seeded by ``seed``); for image
    folders the files are chosen before decoding, so a small limit is fast. ``root`` (or
    ``$UAT_DATA``) is only used by ``cifar10``; ``image_size`` only by ``imagefolder:<path>``.
    """
    _check_split(split)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UATError(f"limit must be a positive integer, got {limit!r}")
    if name == "digits":
        return _load_digits(split).subset(limit, seed)
    if name == "cifar10":
        return _load_cifar10(split, resolve_data_root(root), limit, seed, download, progress)
    if name.startswith("imagefolder:"):
        if not isinstance(image_size, int) or image_size < 1:
            raise UATError(f"image size must be a positive integer, got {image_size!r}")
        path = imagefolder_path(name)
        split_dir = imagefolder_split_dir(path, split)
        classes = class_names(imagefolder_split_dir(path, "train"))
        images, labels = _load_folder(split_dir, classes, split, limit, seed, image_size,
                                      exact_size=False, progress=progress)
        return ImageData(images, labels, classes, name, split,
                         f"Image folder {split_dir.resolve()}, resized and center-cropped to "
                         f"{image_size}x{image_size}", IMAGENET_MEAN, IMAGENET_STD)
    raise _unknown(name)


def _load_digits(split: str) -> ImageData:
    """scikit-learn's 1797 8x8 digits, upsampled to ``(N, 1, 32, 32)`` uint8, split 1297/500."""
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import and only digits needs it

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0   # (1797, 1, 8, 8)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)   # (1797, 1, 32, 32)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)                      # (1797, 1, 32, 32)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)                    # (1797,)
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))
    idx = perm[:DIGITS_TRAIN] if split == "train" else perm[DIGITS_TRAIN:]
    return ImageData(images[idx].contiguous(), labels[idx], [str(d) for d in range(10)], "digits",
                     split, "scikit-learn's bundled 8x8 digits, upsampled to 32x32 (offline fallback)",
                     DIGITS_MEAN, DIGITS_STD)


def _load_cifar10(split: str, root: str | None, limit: int | None, seed: int,
                  download: bool, progress: bool) -> ImageData:
    """CIFAR-10 from an ImageFolder copy, a torchvision root, or a torchvision download."""
    def make(images: torch.Tensor, labels: torch.Tensor, source: str) -> ImageData:
        return ImageData(images, labels, list(CIFAR10_CLASSES), "cifar10", split, source,
                         CIFAR10_MEAN, CIFAR10_STD)

    if root is None:
        target = cache_dir() / "cifar10"
        images, labels = _torchvision_cifar10(str(target), split, download=download)
        return make(images, labels, f"CIFAR-10 downloaded by torchvision to {target}").subset(limit, seed)

    base = Path(os.path.expanduser(root))
    if not base.is_dir():
        raise UATError(f"CIFAR-10 data root {base} does not exist")
    if (base / "train").is_dir() and (base / "test").is_dir():
        split_dir = base / split
        classes = class_names(split_dir)
        if classes != CIFAR10_CLASSES:
            raise UATError(f"{split_dir} does not hold the 10 CIFAR-10 class folders "
                           f"({', '.join(CIFAR10_CLASSES)}), found: {', '.join(classes) or 'none'}")
        images, labels = _load_folder(split_dir, classes, split, limit, seed, image_size=32,
                                      exact_size=True, progress=progress)
        return make(images, labels, f"CIFAR-10 ImageFolder copy at {base}")
    if base.name == "cifar-10-batches-py":
        base = base.parent
    if (base / "cifar-10-batches-py").is_dir():
        images, labels = _torchvision_cifar10(str(base), split, download=False)
        return make(images, labels, f"CIFAR-10 torchvision copy at {base}").subset(limit, seed)
    raise UATError(f"{base} holds no CIFAR-10 copy: expected train/ and test/ class folders "
                   f"or a cifar-10-batches-py folder")


def _torchvision_cifar10(root: str, split: str, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 3, 32, 32)`` uint8 images and ``(N,)`` labels via ``torchvision.datasets.CIFAR10``."""
    import torchvision.datasets  # deferred: torchvision is slow to import and only needed here

    try:
        if download:
            os.makedirs(root, exist_ok=True)
        ds = torchvision.datasets.CIFAR10(root, train=(split == "train"), download=download)
    except Exception as exc:  # no network, a corrupt archive, an unwritable cache, ...
        if download:
            raise UATError(_OFFLINE_MSG) from exc
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UATError(f"cannot read the torchvision CIFAR-10 copy in {root}: {first_line}") from exc
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)              # (N,)
    return images, labels


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

def imagefolder_split_dir(path: Path, split: str) -> Path:
    """``path/train`` and ``path/test`` (or ``path/val``) when both exist, else ``path`` itself."""
    test_dir = next((path / d for d in ("test", "val") if (path / d).is_dir()), None)
    if (path / "train").is_dir() and test_dir is not None:
        return path / "train" if split == "train" else test_dir
    return path


def has_test_split(name: str) -> bool:
    """False for an ``imagefolder:`` tree without separate train and test (val) folders: its "test" images
    are then the same images the attack is built on."""
    if not name.startswith("imagefolder:"):
        return True
    path = imagefolder_path(name)
    return imagefolder_split_dir(path, "train") != imagefolder_split_dir(path, "test")


def class_names(split_dir: Path) -> list[str]:
    """Sorted names of the (non-hidden) class subfolders."""
    try:
        return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise UATError(f"cannot read {split_dir}: {exc.strerror or exc}") from exc


def class_files(split_dir: Path, classes: list[str]) -> tuple[list[tuple[int, str, list[str]]], int]:
    """``[(label, class folder name, sorted image file names)]`` per class folder of ``split_dir``, and how
    many other files were passed over. The one listing of a folder: the in-memory and the streamed paths
    both order their images by it."""
    out = []
    skipped = 0
    index = {c: i for i, c in enumerate(classes)}
    for name in class_names(split_dir):
        if name not in index:
            raise UATError(f"class folder {split_dir / name} is not one of the train classes")
        try:
            entries = [e.name for e in os.scandir(split_dir / name) if e.is_file()]
        except OSError as exc:
            raise UATError(f"cannot read {split_dir / name}: {exc.strerror or exc}") from exc
        # macOS resource forks ("._x.jpg"), hidden files and anything without an image extension are skipped
        found = sorted(n for n in entries if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS))
        skipped += len(entries) - len(found)
        out.append((index[name], name, found))
    if not any(found for _, _, found in out):
        raise UATError(f"no images found in {split_dir}: expected {split_dir}/<class>/<image>.jpg")
    return out, skipped


def skipped_note(split_dir: Path, skipped: int) -> None:
    if skipped:
        print(f"note: skipped {skipped} file(s) in {split_dir} that are not images (hidden files, '._*' "
              f"resource forks, other extensions)", file=sys.stderr)


def _list_images(split_dir: Path, classes: list[str]) -> tuple[list[Path], torch.Tensor]:
    """Image files (sorted per class) and their ``(N,)`` int64 labels."""
    per_class, skipped = class_files(split_dir, classes)
    files: list[Path] = []
    labels: list[int] = []
    for label, name, found in per_class:
        files.extend(split_dir / name / f for f in found)
        labels.extend([label] * len(found))
    skipped_note(split_dir, skipped)
    return files, torch.tensor(labels, dtype=torch.int64)


def check_class_folders(name: str) -> None:
    """For ``imagefolder:<path>`` with train and test (val) folders: a one-line UATError when the test split has
    a class folder the train split lacks (its labels would mean nothing). Reads folder names only, so that
    commands can refuse such a tree before any work; other datasets pass."""
    if not name.startswith("imagefolder:"):
        return
    path = imagefolder_path(name)
    train_dir, test_dir = imagefolder_split_dir(path, "train"), imagefolder_split_dir(path, "test")
    if train_dir == test_dir:
        return
    known = set(class_names(train_dir))
    extra = [c for c in class_names(test_dir) if c not in known]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UATError(f"class folder {test_dir / extra[0]} is not one of the train classes{more}")


def decode_file(path: Path) -> torch.Tensor:
    """Decode one image file to ``(3, H, W)`` uint8 RGB (torchvision, with PIL as a fallback)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UATError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    from PIL import Image  # deferred: only decoding needs PIL (stream._preload loads it before workers fork)
    try:
        with Image.open(io.BytesIO(data)) as im:              # reads the header only
            w, h = im.size
    except Exception:
        w = h = 0                                              # not for PIL: let the decoders below say so
    if w * h > MAX_PIXELS:
        raise UATError(f"image {path} is {w}×{h} pixels, above the {MAX_PIXELS // 10 ** 6} M pixel limit "
                       "(a decompression bomb, or far larger than a classifier needs)")
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            # torchvision 0.29's PNG decoder ends the whole process (a segmentation fault after "libpng error")
            # on a PNG with damaged image data; PIL raises an exception instead, and PNG is lossless: the same
            # pixels (16-bit RGB aside, which PIL reads by its high byte: at most 1 level apart)
            raise ValueError("PNG: decoded by PIL below")
        from torchvision.io import ImageReadMode, decode_image  # deferred: torchvision is slow to import

        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of torchcodec; they are still the
            # fastest option here (~3x PIL on small JPEGs), and PIL below covers their removal.
            warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities",
                                    category=DeprecationWarning)
            img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        if img.dtype == torch.uint16:                          # 16-bit PNG: scale 0..65535 to 0..255
            img = (img.to(torch.int32) * 255 + 32767).div(65535, rounding_mode="floor").to(torch.uint8)
        if img.dtype == torch.uint8:
            return img
    except Exception:
        pass  # e.g. BMP, which torchvision does not decode: try PIL
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):          # 16-bit grey: scale, do not clip
                arr16 = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or arr16.max() > 255 else 255.0
                grey = np.clip(np.rint(arr16 * 255.0 / top), 0, 255).astype(np.uint8)
                arr = np.repeat(grey[:, :, None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGB"))                  # (H, W, 3)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)           # (3, H, W)
    except Exception as exc:
        raise UATError(f"cannot decode image {path}: the file is corrupt or not an image") from exc


def fit_image(img: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize the shorter side to ``round(image_size * 256 / 224)``, center-crop to ``image_size``."""
    from torchvision.transforms.v2 import functional as TF  # deferred: torchvision is slow to import

    img = TF.resize(img, [round(image_size * 256 / 224)], antialias=True)  # (3, h', w')
    return TF.center_crop(img, [image_size, image_size])                    # (3, S, S)


def _load_folder(split_dir: Path, classes: list[str], split: str, limit: int | None, seed: int,
                 image_size: int, exact_size: bool, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a class-folder tree into ``(N, 3, S, S)`` uint8 images and ``(N,)`` labels.

    With ``limit`` only the chosen files are decoded (or sliced out of the cache, if present); a
    full load of a large tree is cached decoded. ``exact_size`` requires every image to already be
    ``image_size`` square (CIFAR-10) instead of resizing it.
    """
    cache_file = _decoded_cache_file(split_dir, split, image_size, exact_size)
    cached = _read_cache(cache_file, classes)
    if cached is not None:
        images, labels = cached
        if limit is not None and limit < len(labels):
            idx = select_indices(labels, limit, seed)
            images, labels = images[idx], labels[idx]
        return images, labels

    files, labels = _list_images(split_dir, classes)
    full = limit is None or limit >= len(files)
    if limit is not None and limit < len(files):
        idx = select_indices(labels, limit, seed)
        files, labels = [files[i] for i in idx.tolist()], labels[idx]

    images = torch.empty((len(files), 3, image_size, image_size), dtype=torch.uint8)  # (N, 3, S, S)
    bar = None
    if progress and len(files) > _PROGRESS_MIN_FILES:
        from tqdm.auto import tqdm  # deferred: only a large folder's first decode draws a progress bar
        bar = tqdm(total=len(files), desc=f"Decoding {split_dir.name} images", unit="img")
    try:
        for i, path in enumerate(files):
            img = decode_file(path)                                  # (3, H, W)
            if exact_size:
                if img.shape[1:] != (image_size, image_size):
                    raise UATError(f"image {path} is {img.shape[2]}x{img.shape[1]}, "
                                   f"expected {image_size}x{image_size}")
            else:
                img = fit_image(img, image_size)                           # (3, S, S)
            images[i] = img
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()

    if full and len(files) >= _CACHE_MIN_FILES:
        _write_cache(cache_file, images, labels, classes)
    return images, labels


# --------------------------------------------------------------------------------------------
# Decoded cache
# --------------------------------------------------------------------------------------------

def _decoded_cache_file(split_dir: Path, split: str, image_size: int, exact_size: bool) -> Path:
    """``<cache>/decoded/<sha1>.pt``, keyed on the folder path, split, size and folder mtimes."""
    split_dir = split_dir.resolve()
    key = [_CACHE_VERSION, str(split_dir), split, str(image_size), str(exact_size)]
    try:
        key.append(str(split_dir.stat().st_mtime_ns))
        # Adding or removing a file changes its class folder's mtime.
        key.extend(f"{e.name}:{e.stat().st_mtime_ns}" for e in sorted(os.scandir(split_dir), key=lambda e: e.name)
                   if e.is_dir())
    except OSError:
        pass
    digest = hashlib.sha1("\n".join(key).encode()).hexdigest()
    return cache_dir() / "decoded" / f"{digest}.pt"


def _read_cache(path: Path, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached ``(images, labels)``, or None when missing, unreadable or inconsistent."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        images, labels = blob["images"], blob["labels"]
        ok = (blob["classes"] == classes and images.dtype == torch.uint8 and images.ndim == 4
              and labels.dtype == torch.int64 and labels.shape == images.shape[:1])
        return (images, labels) if ok else None
    except Exception:
        return None


def _write_cache(path: Path, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
    """Save atomically (temporary file, then ``os.replace``); silently skip if not writable."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        with os.fdopen(fd, "wb") as fh:
            torch.save({"images": images, "labels": labels, "classes": list(classes)}, fh)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass

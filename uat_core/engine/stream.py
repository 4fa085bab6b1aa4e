"""Image folders read from disk as they are needed (streamed), for splits too large to decode into memory.

``data.load_dataset`` decodes a whole split into one uint8 tensor: right for CIFAR-10 (150 MB) and for
small folders, impossible for the 1.28 M ImageNet training images (about 190 GB at 224²). A
:class:`FolderStream` holds only the file list (relative paths in one numpy byte array, labels in one
int64 tensor: about 100 bytes an image, no decoded pixels) and is a ``torch.utils.data.Dataset``: a
``DataLoader`` with ``workers`` processes decodes each minibatch as it is consumed, so memory stays bounded
(a few minibatches in flight per worker) whatever the folder's size.

Views, as torchvision's ImageNet references make them:

    evaluation   resize the shorter side to round(S·256/224), center-crop S×S: ``data.fit_image``, the very
                 function the in-memory path uses, on the very decoder (``data.decode_file``), so a
                 streamed split gives the same images, and the same accuracy, as its in-memory copy
    training     random-resized-crop (area 8-100%, aspect 3/4-4/3) to S×S and a horizontal flip; the
                 draws of image i in epoch e come from a generator seeded by (seed, e, i): the same on
                 every run whatever the number of workers, so a resumed run continues exactly

Which split is streamed: ``open_split(..., mode)``; ``auto`` streams an ``imagefolder:`` split whose decoded
copy (images × 3 × S² bytes) exceeds a threshold, ``on`` always, ``off`` never (``cifar10`` and ``digits``
are small and always decoded in memory).

Bad input is refused before any work by :meth:`FolderStream.check`, which reads every file's header (in
the worker processes): unreadable files, files with an image extension that are not images, images
smaller than the crop and decompression bombs are one-line UATErrors naming the first such file. A file
whose header reads but whose pixels do not decode (a damaged JPEG or PNG, a file removed meanwhile) is met
only mid-stream: it is skipped and named in a :class:`~uat_core.engine.errors.UATWarning`, never a crash.

Example::

    s = open_split("imagefolder:/data/imagenet", "test", 224, mode="on", workers=8)
    s = s.select(10_000, seed=0).check()              # a stratified subset of the files, headers checked
    for x, y in s.iterate(s.plan(256)):                # x (b,3,224,224) uint8, y (b,) int64
        ...
    attack_set = s.subset(2000, seed=0)                # decoded: a data.ImageData
"""
from __future__ import annotations

import ctypes
import gc
import math
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .data import (IMAGENET_MEAN, IMAGENET_STD, MAX_PIXELS, ImageData, class_files, class_names, decode_file,
                   fit_image, imagefolder_path, imagefolder_split_dir, select_indices, skipped_note)
from .errors import UATError, UATWarning

STREAM_MODES = ("auto", "on", "off")
DEFAULT_THRESHOLD_MB = 2048     # --stream auto: stream a split whose decoded uint8 copy is larger than this
MAX_DEFAULT_WORKERS = 8
EVAL_BATCH = 128                # images a streamed evaluation decodes and classifies at a time (256: eval of the
                                # benchmark folder at 224² peaked at 2.04 GB, 128: 1.57 GB; docs/benchmarks.md)
RRC_SCALE = (0.08, 1.0)         # random-resized-crop: area fraction and aspect ratio (torchvision's defaults)
RRC_RATIO = (3 / 4, 4 / 3)
_SCAN_CHUNK = 256               # headers read per worker task
_PARALLEL_MIN_FILES = 1000      # fewer files: read the headers in this process (workers cost more to start)
_PROGRESS_MIN_FILES = 300
Key = int | tuple[int, int, bool]   # an image index (evaluation view) or (index, seed, flip) (training view)
KeyT = TypeVar("KeyT", bound=Key)   # minibatches hold keys of one kind: plan()'s indices, or the trainer's triples


def default_workers() -> int:
    """One decoding process per CPU core, at most 8."""
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def check_options(mode: str, threshold_mb: float, workers: int | None, name: str | None = None) -> None:
    """One-line UATErrors for the stream options (``--stream``, ``--stream-threshold``, ``--workers``), and for
    ``mode`` on with a dataset ``name`` that is never streamed."""
    if mode == "on" and name in ("cifar10", "digits"):
        raise UATError(f"--stream on reads imagefolder:<path> datasets from disk; {name} is small and always "
                       "decoded into memory (use --stream auto or off)")
    if mode not in STREAM_MODES:
        raise UATError(f"unknown stream mode '{mode}': choose {', '.join(STREAM_MODES)}")
    if not (threshold_mb > 0 and math.isfinite(threshold_mb)):
        raise UATError(f"the stream threshold is a size in MB > 0, got {threshold_mb}")
    if workers is not None and workers < 0:
        raise UATError(f"workers must be 0 (decode in this process) or more, got {workers}")


def is_stream(data) -> bool:
    return isinstance(data, FolderStream)


def open_split(name: str, split: str, image_size: int, mode: str = "auto",
               threshold_mb: float = DEFAULT_THRESHOLD_MB, workers: int | None = 0,
               note: bool = True) -> FolderStream | None:
    """The split as a :class:`FolderStream` (its files listed; nothing decoded, nothing checked yet), or
    None when it is to be decoded into memory (``data.load_dataset``): ``mode`` off, ``auto`` with a decoded
    copy of at most ``threshold_mb`` MB, or a dataset other than ``imagefolder:`` (refused with ``on``).
    ``note``: say on stderr that the split is streamed."""
    check_options(mode, threshold_mb, workers, name)
    if not name.startswith("imagefolder:"):
        return None
    if mode == "off":
        return None
    stream = FolderStream.open(name, split, image_size, default_workers() if workers is None else workers)
    if mode == "auto" and stream.decoded_bytes <= threshold_mb * 2 ** 20:
        return None
    skipped_note(stream.root, stream.passed_over)
    if note:
        mb = stream.decoded_bytes / 2 ** 20
        size = f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.1f} MB"
        print(f"note: streaming the {split} split from {stream.root} ({len(stream)} images, {size} decoded) with "
              f"{stream.workers} decoding process(es)", file=sys.stderr)
    return stream


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------

def train_view(img: torch.Tensor, size: int, gen: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random-resized-crop of ``img`` (3,H,W) uint8 to (3,size,size) and, with ``flip``, a horizontal flip
    half of the time; every draw from ``gen``.

    The crop covers a uniform fraction of the area in ``RRC_SCALE`` with a log-uniform aspect ratio in
    ``RRC_RATIO``; after ten draws that do not fit in the image, the largest centred crop whose aspect
    ratio is within the range."""
    from torchvision.transforms.v2 import functional as TF  # deferred: torchvision is slow to import

    _, H, W = img.shape
    lo, hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    box = None
    for _ in range(10):
        u_area, u_ratio = torch.rand(2, generator=gen).tolist()
        area = H * W * (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u_area)
        aspect = math.exp(lo + (hi - lo) * u_ratio)                      # width / height
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= W and 0 < h <= H:
            top = int(torch.randint(0, H - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, W - w + 1, (1,), generator=gen))
            box = (top, left, h, w)
            break
    if box is None:
        aspect = W / H
        if aspect < RRC_RATIO[0]:                       # too tall: the full width
            w, h = W, min(H, round(W / RRC_RATIO[0]))
        elif aspect > RRC_RATIO[1]:                     # too wide: the full height
            w, h = min(W, round(H * RRC_RATIO[1])), H
        else:
            w, h = W, H
        box = ((H - h) // 2, (W - w) // 2, h, w)
    out = TF.resized_crop(img, *box, [size, size], antialias=True)     # (3, S, S)
    if flip and float(torch.rand(1, generator=gen)) < 0.5:
        out = out.flip(-1)
    return out


# --------------------------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------------------------

class FolderStream(Dataset):
    """One split of an image folder, decoded from disk one minibatch at a time (see the module docstring).

    Holds no decoded image: ``names`` is an ``(N,)`` numpy byte array of paths relative to ``root``,
    ``labels`` an ``(N,)`` int64 tensor. It answers what a model and a trainer ask of an ``ImageData``
    (``name, split, source, classes, num_classes, shape, mean, std, len``); ``subset``/``load`` decode into
    an ``ImageData``, ``select`` narrows to a stratified subset of the files without decoding anything.
    """

    def __init__(self, root: Path, names: np.ndarray, labels: torch.Tensor, classes: list[str], image_size: int,
                 name: str, split: str, workers: int = 0, passed_over: int = 0):
        self.root = Path(root)
        self.names = names              # (N,) bytes: "<class>/<file>", relative to root
        self.labels = labels            # (N,) int64
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.name, self.split = name, split
        self.workers = int(workers)
        self.passed_over = passed_over  # files without an image extension, not listed
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.source = (f"Image folder {self.root}, streamed from disk: resized and center-cropped to "
                       f"{image_size}x{image_size} (training: random-resized-crop and flip)")

    @classmethod
    def open(cls, name: str, split: str, image_size: int, workers: int = 0) -> FolderStream:
        """List the files of one split of ``imagefolder:<path>`` (the order and labels of ``load_dataset``)."""
        if split not in ("train", "test"):
            raise UATError(f"unknown split {split!r}: choose train or test")
        if not isinstance(image_size, int) or image_size < 1:
            raise UATError(f"image size must be a positive integer, got {image_size!r}")
        path = imagefolder_path(name)
        split_dir = imagefolder_split_dir(path, split)
        classes = class_names(imagefolder_split_dir(path, "train"))
        per_class, passed_over = class_files(split_dir, classes)
        names = np.array([os.fsencode(f"{folder}/{f}") for _, folder, found in per_class for f in found],
                         dtype=np.bytes_)
        labels = torch.tensor([label for label, _, found in per_class for _ in found], dtype=torch.int64)
        return cls(split_dir.resolve(), names, labels, classes, image_size, name, split, workers,
                   passed_over=passed_over)

    # ---- what an ImageData answers ------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def decoded_bytes(self) -> int:
        """The size a decoded uint8 copy of the split would take in memory."""
        return len(self) * 3 * self.image_size ** 2

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.names[i])

    def _like(self, idx: torch.Tensor) -> FolderStream:
        return FolderStream(self.root, self.names[idx.numpy()], self.labels[idx], self.classes, self.image_size,
                            self.name, self.split, self.workers)

    def part(self, start: int, stop: int) -> FolderStream:
        """A stream over files ``start … stop−1`` (in order): one rank's shard under torchrun."""
        return self._like(torch.arange(start, min(stop, len(self))))

    def select(self, n: int | None, seed: int = 0, stratified: bool = True) -> FolderStream:
        """A stream over a seeded random subset of ``n`` of the files, in their order (``self`` when ``n`` is
        None or at least ``len``): the files ``load_dataset(..., limit=n, seed=seed)`` decodes."""
        if n is None or n >= len(self):
            return self
        return self._like(select_indices(self.labels, n, seed, stratified))

    # ---- reading ------------------------------------------------------------------------------
    def __getitem__(self, key: Key):
        """``(image (3,S,S) uint8, label, None)``, or ``(None, label, message)`` when the file does not decode.
        ``key``: an index (the evaluation view) or ``(index, seed, flip)`` (the training view, drawn from ``seed``;
        ``flip``: with the horizontal flip)."""
        i, seed, flip = key if isinstance(key, tuple) else (key, None, False)
        label = int(self.labels[i])
        try:
            img = decode_file(self.path(i))                                     # (3, H, W)
        except UATError as exc:                   # unreadable, damaged, removed since the check: skip it
            return None, label, str(exc)
        if seed is None:
            return fit_image(img, self.image_size), label, None
        return train_view(img, self.image_size, torch.Generator().manual_seed(seed), flip), label, None

    def plan(self, batch_size: int, order: torch.Tensor | None = None) -> list[list[int]]:
        """Minibatches of image indices, ``order`` (default 0 … N−1) cut into runs of ``batch_size``."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UATError(f"batch size must be a positive integer, got {batch_size!r}")
        idx = (torch.arange(len(self)) if order is None else order).tolist()
        return [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]

    def iterate(self, batches: Iterable[list[KeyT]], pin: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x (b,3,S,S) uint8, y (b,) int64)`` for each minibatch of keys, decoded by ``workers``
        processes (0: this one) a few minibatches ahead. A file that does not decode is left out of its
        minibatch (``b`` is then smaller, possibly 0) and named in a UATWarning."""
        batches = list(batches)
        if not batches:
            return
        # one minibatch gains nothing from another process; more workers than minibatches would idle
        workers = min(self.workers, len(batches)) if len(batches) > 1 else 0
        if workers:
            _preload()
            _trim_heap()
        loader = DataLoader(self, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                            pin_memory=pin, worker_init_fn=_worker_init if workers else None,
                            generator=torch.Generator().manual_seed(0))   # leaves the global RNG alone
        try:
            for x, y, errors in loader:
                for msg in errors:
                    warnings.warn(f"{msg}; skipped it", UATWarning, stacklevel=2)
                yield x, y
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            first = (str(exc).strip().splitlines() or ["a decoding process died"])[0]
            raise UATError(f"a decoding process of {self.root} stopped ({first}); run again with --workers 0 "
                           "to decode in the main process and see which file") from exc

    def batches(self, batch_size: int = EVAL_BATCH, shuffle: bool = False, seed: int = 0,
                device: str | torch.device = "cpu", drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Like ``ImageData.batches``: ``(x (b,C,H,W) float32 in [0, 1], y (b,))`` on ``device``, the
        evaluation view; minibatches emptied by undecodable files are passed over."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)) if shuffle else None
        plan = self.plan(batch_size, order)
        if drop_last and plan and len(plan[-1]) < batch_size:
            plan.pop()
        for x, y in self.iterate(plan, pin=torch.device(device).type == "cuda"):
            if len(y):
                yield x.to(device, non_blocking=True).float().div_(255.0), y.to(device, non_blocking=True)

    def load(self, progress: bool = False) -> ImageData:
        """Decode the whole (selected) stream into an ``ImageData`` (evaluation view); undecodable files are
        skipped with a warning."""
        n, S = len(self), self.image_size
        images = torch.empty((n, 3, S, S), dtype=torch.uint8)                     # (N, 3, S, S)
        labels = torch.empty((n,), dtype=torch.int64)
        bar = _bar(progress and n > _PROGRESS_MIN_FILES, n, f"Decoding {self.root.name} images")
        k = 0
        plan = self.plan(EVAL_BATCH)
        try:
            for keys, (x, y) in zip(plan, self.iterate(plan)):
                if len(y):
                    images[k:k + len(y)], labels[k:k + len(y)] = x, y
                    k += len(y)
                if bar is not None:
                    bar.update(len(keys))
        finally:
            if bar is not None:
                bar.close()
        if k == 0:
            raise UATError(f"none of the {n} selected images of {self.root} could be decoded")
        return ImageData(images[:k].clone() if k < n else images, labels[:k].clone() if k < n else labels,
                         list(self.classes), self.name, self.split,
                         f"Image folder {self.root}: {k} images read from disk, resized and center-cropped to "
                         f"{S}x{S}", self.mean, self.std)

    def subset(self, n: int | None, seed: int = 0, stratified: bool = True) -> ImageData:
        """``n`` seeded, stratified images decoded into an ``ImageData``: the same images as
        ``load_dataset(..., limit=n, seed=seed)`` (an attack set, a preview grid)."""
        return self.select(n, seed, stratified).load()

    # ---- checking before any work -------------------------------------------------------------
    def check(self, progress: bool = False) -> FolderStream:
        """Read the header of every file (in the worker processes for large folders) and refuse, with one
        line naming the first such file, a folder with unreadable files, non-images, images smaller than the
        crop or decompression bombs. Returns self."""
        n = len(self)
        workers = self.workers if n >= _PARALLEL_MIN_FILES else 0
        if workers:
            _preload()
        loader = DataLoader(_Headers(self), batch_size=_SCAN_CHUNK, num_workers=workers, collate_fn=list,
                            worker_init_fn=_worker_init if workers else None,
                            generator=torch.Generator().manual_seed(0))
        bar = _bar(progress and n > _PROGRESS_MIN_FILES, n, f"Checking {self.root.name} images")
        problems: list[str] = []
        S = self.image_size
        i = 0
        try:
            for chunk in loader:
                for w, h, err in chunk:
                    path = self.path(i)
                    i += 1
                    if err is not None:
                        problems.append(err)
                    elif w * h > MAX_PIXELS:
                        problems.append(f"image {path} is {w}×{h} pixels, above the {MAX_PIXELS // 10 ** 6} M pixel "
                                        "limit (a decompression bomb, or far larger than a classifier needs)")
                    elif min(w, h) < S:
                        problems.append(f"image {path} is {w}×{h} pixels, smaller than the {S}×{S} crop: lower "
                                        "--image-size or remove the image")
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if problems:
            more = f" ({len(problems) - 1} more file(s) with problems)" if len(problems) > 1 else ""
            raise UATError(f"{problems[0]}{more}")
        return self


class _Headers(Dataset):
    """``(width, height, None)`` or ``(0, 0, message)`` of each file of a stream, from its header only."""

    def __init__(self, stream: FolderStream):
        self.root, self.names = stream.root, stream.names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        path = self.root / os.fsdecode(self.names[i])
        from PIL import Image, UnidentifiedImageError  # deferred: runs in the decoding workers (see _preload)
        try:
            with open(path, "rb") as fh, warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(fh) as im:                     # reads the header, not the pixels
                    w, h = im.size
            return int(w), int(h), None
        except UnidentifiedImageError:
            return 0, 0, f"{path} is not an image (or its header is damaged): remove it from the folder"
        except Image.DecompressionBombError:                   # far above our limit too
            limit = Image.MAX_IMAGE_PIXELS
            assert limit is not None                           # PIL raises this only while it has a limit
            return 0, 0, (f"image {path} is above PIL's {2 * limit // 10 ** 6} M pixel limit (a "
                          "decompression bomb, or far larger than a classifier needs)")
        except OSError as exc:
            return 0, 0, f"cannot read image {path}: {exc.strerror or exc}"
        except Exception as exc:                               # a header PIL chokes on
            return 0, 0, f"{path} is not a readable image ({type(exc).__name__}): remove it from the folder"


def _collate(items) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the decoded images of a minibatch; the messages of those that did not decode beside them."""
    good = [(img, label) for img, label, err in items if err is None]
    errors = [err for _, _, err in items if err is not None]
    # default_collate stacks straight into shared memory in a decoding process: a stack on the process's own
    # heap, then copied to shared memory to be sent, left a 9.6 MB hole (64 images at 224²) that the next
    # minibatch's images fragmented, so each decoding process's heap grew by about that much every minibatch
    x = default_collate([img for img, _ in good]) if good else torch.empty((0,), dtype=torch.uint8)
    y = torch.tensor([label for _, label in good], dtype=torch.int64)
    return x, y, errors


def _preload() -> None:
    """Import the decoders and resizers here before the worker processes fork, so that they inherit them
    (each would otherwise spend seconds importing torchvision at every epoch's start). Deferred on purpose:
    torchvision is slow to import and only a stream with decoding processes needs it this early."""
    import PIL.Image  # noqa: F401  (deferred on purpose: see the docstring)
    import torchvision.io  # noqa: F401  (deferred on purpose)
    import torchvision.transforms.v2.functional  # noqa: F401  (deferred on purpose)


def _trim_heap() -> None:
    """Give the heap's free pages back to the system before the decoding processes fork. A forked process
    shares its parent's pages until one of them writes: every free page the trainer reuses after the fork
    would stay behind as a private copy in each decoding process (about 0.9 GB of a one-epoch training run at
    224², docs/benchmarks.md). glibc only; elsewhere nothing happens."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):       # not glibc (musl): no malloc_trim
            pass


def _worker_init(_worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: the decoding processes leave it to the main process, which
    finishes its step and saves a checkpoint (a worker that died of it would end the run instead)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _bar(show: bool, total: int, desc: str):
    if not show:
        return None
    from tqdm.auto import tqdm  # deferred: only a progress bar needs tqdm
    return tqdm(total=total, desc=desc, unit="img")

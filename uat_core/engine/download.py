"""Downloading CIFAR-10 into the cache the command line uses, with progress, for the app.

``load_dataset("cifar10")`` without ``--data-root`` / ``$UAT_DATA`` reads torchvision's CIFAR-10 copy in
``~/.cache/uat_lab/cifar10`` (``$XDG_CACHE_HOME/uat_lab/cifar10``) and has torchvision download it there
when it is missing. :func:`download_cifar10` fetches the same archive from the same address into the same
folder, but reports the bytes as they arrive (torchvision only draws a tqdm bar on stderr) and fails with
one line. Nothing here knows of Streamlit: the app's sidebar only calls it.

* The archive is written to a temporary file beside its final name and renamed once complete and its MD5
  is torchvision's published one; the ``cifar-10-batches-py`` folder is unpacked into a temporary folder
  and renamed the same way. A failure, or an interruption, leaves no partial file behind, and the folder
  the loaders look for only ever appears complete.
* The archive is removed once unpacked (the loaders read only the unpacked batches), which saves 163 MiB;
  a verified archive already there (a command-line download interrupted while unpacking) is reused.

The address, size and checksum are module constants, so that tests can point them at a small local file.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from uat_core.engine.data import cache_dir
from uat_core.engine.errors import UATError

# torchvision.datasets.CIFAR10's url, filename, tgz_md5 and base_folder (checked against it by the tests)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BYTES = 170_498_071         # the archive's size (163 MiB); used when the server sends no length
CIFAR10_UNPACKED_BYTES = 186_300_000   # the unpacked folder, a little over 186 MB
# The files the torchvision loader opens (it checks their MD5s itself when it reads them).
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta")

CHUNK_BYTES = 1 << 20               # read (and report progress) a MiB at a time
TIMEOUT_S = 30.0                    # seconds without a byte before the download is given up
_STALE_S = 3600.0                   # a temporary file or folder untouched this long is a killed process's

_LOCK = threading.Lock()            # one download at a time in this process (the app's sessions share it)

Progress = Callable[[int, int], None]   # (bytes so far, bytes in all)


def cifar10_root() -> Path:
    """The torchvision root ``load_dataset("cifar10")`` uses when no data root is given (the command line's
    download folder): ``<cache>/uat_lab/cifar10``."""
    return cache_dir() / "cifar10"


def cifar10_downloaded(root: Path | None = None) -> bool:
    """Whether ``root`` (default :func:`cifar10_root`) holds an unpacked ``cifar-10-batches-py`` folder."""
    return ((root or cifar10_root()) / CIFAR10_FOLDER).is_dir()


def download_cifar10(progress: Progress | None = None, root: Path | None = None) -> Path:
    """Download torchvision's CIFAR-10 archive into ``root`` (default :func:`cifar10_root`) and unpack it.

    ``progress(done, total)`` is called with the bytes received so far, from 0 up to ``total`` (the length
    the server announces); after its last call the archive is checked and unpacked (a few seconds). Returns
    ``root``, which then holds ``cifar-10-batches-py``; at once, without a call to ``progress``, when it
    already does. Raises a one-line :class:`UATError` when there is no network, the transfer breaks off, the
    archive's MD5 is wrong, it cannot be unpacked, or the folder cannot be written; nothing partial remains.
    """
    root = Path(root) if root is not None else cifar10_root()
    with _LOCK:
        if cifar10_downloaded(root):
            return root
        created = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UATError(f"cannot create the CIFAR-10 folder {root}: {exc.strerror or exc}") from exc
        _sweep(root)
        try:
            archive = root / CIFAR10_ARCHIVE
            if not (archive.is_file() and _md5(archive) == CIFAR10_MD5):
                _check_space(root, CIFAR10_BYTES + CIFAR10_UNPACKED_BYTES)
                _fetch(CIFAR10_URL, archive, progress)
            else:
                _check_space(root, CIFAR10_UNPACKED_BYTES)
            _unpack(archive, root)
            archive.unlink(missing_ok=True)
        except BaseException:
            if created:                         # leave no empty folder of ours behind either
                try:
                    root.rmdir()
                except OSError:                 # not empty (a reused archive, another process's files)
                    pass
            raise
    return root


def _sweep(root: Path) -> None:
    """Remove the temporary files and folders of downloads whose process was killed (no ``finally`` ran):
    the ones untouched for ``_STALE_S`` seconds (a live download writes its file a MiB at a time)."""
    now = time.time()
    for p in [*root.glob(f".{CIFAR10_ARCHIVE}.*.part"), *root.glob(f".{CIFAR10_FOLDER}.*")]:
        try:
            if now - p.stat().st_mtime > _STALE_S:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        except OSError:                             # gone meanwhile, or not ours to remove: leave it
            pass


def _open_url(url: str, timeout: float) -> BinaryIO:
    """The response to a GET of ``url`` (a file-like object with ``read`` and ``headers``); tests replace it."""
    return urllib.request.urlopen(url, timeout=timeout)     # noqa: S310 (a fixed https address, or a test's file)


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line: for a URLError its reason, for an OSError its words without the
    "[Errno N]" ("Name or service not known", "Connection refused")."""
    reason = getattr(exc, "reason", None)
    reason = exc if reason is None or isinstance(exc, urllib.error.HTTPError) else reason   # "HTTP Error 404: ..."
    text = (reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)) \
        or type(reason).__name__
    return " ".join(str(text).split())


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def _check_space(root: Path, needed: int) -> None:
    """A one-line UATError when the disk holding ``root`` has less than ``needed`` bytes free."""
    free = shutil.disk_usage(root).free
    if free < needed:
        raise UATError(f"CIFAR-10 needs about {_mb(needed)} of disk space in {root} and {_mb(free)} are free: "
                       "make room, or set UAT_DATA to a CIFAR-10 copy elsewhere")


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, progress: Progress | None) -> None:
    """GET ``url`` into ``dest``: through a temporary file in the same folder, renamed once the MD5 is right."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = _open_url(url, TIMEOUT_S)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                where = urllib.parse.urlsplit(url).netloc or url
                raise UATError(f"cannot download CIFAR-10 from {where} ({_one_line(exc)}): check the network "
                               "connection, or set UAT_DATA to a CIFAR-10 copy") from exc
            with response:
                headers = getattr(response, "headers", None)     # an HTTP response has them; a test's file not
                length = headers.get("Content-Length") if headers else None
                total = int(length) if length and str(length).isdigit() else CIFAR10_BYTES
                h = hashlib.md5()
                done = 0
                if progress is not None:
                    progress(0, total)
                while True:
                    try:
                        chunk = response.read(CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as exc:
                        raise UATError(f"the CIFAR-10 download broke off after {_mb(done)} of {_mb(total)} "
                                       f"({_one_line(exc)}): try again") from exc
                    if not chunk:
                        break
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise UATError(f"cannot write the CIFAR-10 archive to {dest.parent}: "
                                       f"{exc.strerror or exc}") from exc
                    h.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, max(total, done))
            if length and done < total:
                raise UATError(f"the CIFAR-10 download broke off after {_mb(done)} of {_mb(total)}: try again")
            if done < total and progress is not None:      # no length announced: the bar ends full all the same
                progress(done, done)
            if h.hexdigest() != CIFAR10_MD5:
                raise UATError(f"the downloaded CIFAR-10 archive is corrupt (MD5 {h.hexdigest()}, expected "
                               f"{CIFAR10_MD5}): try again")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)                    # atomic: the archive's name only ever names a whole archive
    finally:
        tmp.unlink(missing_ok=True)


def _unpack(archive: Path, root: Path) -> None:
    """Unpack ``cifar-10-batches-py`` from ``archive`` into ``root``: into a temporary folder, then renamed."""
    target = root / CIFAR10_FOLDER
    tmp = Path(tempfile.mkdtemp(prefix=f".{CIFAR10_FOLDER}.", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = [m for m in tar.getmembers() if _wanted(m)]
                if hasattr(tarfile, "data_filter"):         # Python >= 3.11.4: refuses anything odd again
                    tar.extractall(tmp, members=members, filter="data")
                else:
                    tar.extractall(tmp, members=members)     # noqa: S202 (members checked by _wanted)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            archive.unlink(missing_ok=True)                   # useless: the next try downloads it again
            raise UATError(f"the CIFAR-10 archive is corrupt ({_one_line(exc)}): try again") from exc
        except OSError as exc:                                # (the archive is kept: a full disk, say)
            raise UATError(f"cannot unpack CIFAR-10 into {root}: {exc.strerror or exc}") from exc
        missing = [f for f in CIFAR10_FILES if not (tmp / CIFAR10_FOLDER / f).is_file()]
        if missing:
            archive.unlink(missing_ok=True)
            raise UATError(f"the CIFAR-10 archive lacks {CIFAR10_FOLDER}/{missing[0]}: try again")
        try:
            os.rename(tmp / CIFAR10_FOLDER, target)          # atomic: the folder appears complete or not at all
        except OSError as exc:
            if not target.is_dir():                           # (a folder another process unpacked meanwhile is fine)
                raise UATError(f"cannot unpack CIFAR-10 into {root}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wanted(member: tarfile.TarInfo) -> bool:
    """A plain file or folder inside ``cifar-10-batches-py/`` (no links, no absolute or ``..`` paths)."""
    parts = PurePosixPath(member.name).parts
    return (bool(parts) and parts[0] == CIFAR10_FOLDER and ".." not in parts
            and not member.name.startswith("/") and (member.isfile() or member.isdir()))

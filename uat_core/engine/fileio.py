"""Safe writing: atomic files (temporary file, then rename), output sets that replace each other whole
(:func:`output_set`), and no silent overwrites."""
from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import UATError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` in one step. The file gets the
    mode an ordinary ``open`` would give it (0666 less the umask), not the 0600 of a temporary file, so
    another account serving the app can read what this one wrote."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_bytes(path, data: bytes) -> Path:
    def w(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, w)


def jsonable(o):
    """A JSON-safe copy of ``o``: ∞ as the string "inf" (NaN as null), tensors and numpy arrays as lists or numbers."""
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if hasattr(o, "tolist"):                   # tensors, numpy arrays and scalars (0-d: the number itself)
        return jsonable(o.tolist())
    return o


def write_json(path, obj) -> Path:
    """Atomic JSON; ∞ is written as the string "inf" (JSON has no infinity)."""
    text = json.dumps(jsonable(obj), indent=2, allow_nan=False)
    return atomic_bytes(path, (text + "\n").encode())


def prepare_out_dir(out: str | os.PathLike, names: list[str], force: bool = False, create: bool = True) -> Path:
    """Create ``out`` (unless ``create`` is False: check only); refuse (one-line error) if any of ``names``
    already exists there and not ``force``, or if ``out`` or a folder above it is a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UATError(f"--out {out} is a file, not a folder")
    for parent in out.parents:                 # --out below an existing file: mkdir would raise NotADirectoryError
        if parent.exists():
            if not parent.is_dir():
                raise UATError(f"--out {out}: {parent} is a file, not a folder")
            break
    clash = [n for n in names if (out / n).exists()]
    if clash and not force:
        raise UATError(f"{out / clash[0]} already exists: choose another --out or pass --force to overwrite")
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------- output sets
STAGE_TAG = ".uat-new-"        # staging folders: .<out name>.uat-new-<pid>-<random>, beside --out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True                            # alive, but another user's
    return True


def _remove_stale_stages(parent: Path, name: str) -> None:
    """Staging folders left by runs that were killed (SIGKILL leaves no chance to clean up)."""
    for p in parent.glob(f".{name}{STAGE_TAG}*"):
        try:
            pid = int(p.name[len(name) + 1 + len(STAGE_TAG):].split("-", 1)[0])
        except ValueError:
            continue
        if p.is_dir() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _holds_cwd(folder: Path) -> bool:
    cwd, folder = Path.cwd().resolve(), folder.resolve()
    return cwd == folder or folder in cwd.parents


def _commit(stage: Path, out: Path, names: list[str]) -> str:
    """Put the staged set in place of the old one; returns how: "new", "exchange" or "replace"."""
    if not out.exists():
        os.chmod(stage, 0o777 & ~_umask())
        os.rename(stage, out)                  # the whole set appears at once
        return "new"
    others = [p for p in out.iterdir() if p.name not in names and not (stage / p.name).exists()]
    if not _holds_cwd(out) and all(p.is_symlink() or p.is_file() for p in others):
        # The user's other files in --out come along as hard links; then the two folders trade places in
        # one system call, so a reader (or a kill) sees either the old set or the new one, never a mix.
        linked = []
        try:
            for p in others:
                os.link(p, stage / p.name, follow_symlinks=False)
                linked.append(stage / p.name)
            os.chmod(stage, stat.S_IMODE(out.stat().st_mode))
            if _exchange(stage, out):
                shutil.rmtree(stage, ignore_errors=True)     # now the old set
                return "exchange"
        except OSError:
            pass
        for q in linked:
            q.unlink(missing_ok=True)
    # Fallback (no atomic exchange here, --out is the working folder, or it holds sub-folders): file by
    # file. metrics.json, the record of a set, goes first and comes back last, so an interrupted swap is
    # recognisable as incomplete.
    (out / "metrics.json").unlink(missing_ok=True)
    for n in names:
        if not (stage / n).exists():
            (out / n).unlink(missing_ok=True)            # an old output the new set does not have
    for p in sorted(stage.iterdir(), key=lambda p: p.name == "metrics.json"):
        os.replace(p, out / p.name)
    return "replace"


@contextmanager
def output_set(out: str | os.PathLike, names: list[str], force: bool = False) -> Iterator[Path]:
    """Write a command's outputs as one set.

    Checks ``out`` like :func:`prepare_out_dir`, then yields a hidden staging folder beside it; the caller
    writes its files there. When the block ends normally the staged files replace the old set in ``out``
    at once (``names`` are the outputs the command owns: old ones the new set lacks are removed; anything
    else in ``out`` is kept). If the block raises, or the process is interrupted or killed, ``out`` keeps its
    old set untouched (a killed run's staging folder is removed by the next run)::

        with output_set(args.out, ["metrics.json", "grid.png"], args.force) as stage:
            write_json(stage / "metrics.json", metrics)
    """
    out = Path(os.path.abspath(prepare_out_dir(out, names, force, create=False)))
    # The staging folder sits beside --out (same file system, so the swap is a rename), or inside it when
    # --out is the working folder (then the files are swapped one by one).
    parent, name = (out, "") if out.exists() and _holds_cwd(out) else (out.parent, out.name)
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(parent, name)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}{STAGE_TAG}{os.getpid()}-", dir=parent))
    try:
        yield stage
        _commit(stage, out, list(names))
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)

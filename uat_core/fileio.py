"""Safe writing: atomic files (temporary file, then rename) and no silent overwrites."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

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


def _jsonable(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return _jsonable(o.item())
    return o


def write_json(path, obj) -> Path:
    """Atomic JSON; ∞ is written as the string "inf" (JSON has no infinity)."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False)
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

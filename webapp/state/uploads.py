"""A visitor's uploaded checkpoint: its metadata checked before any model is built, the model kept in the
visitor's session only (one at a time), a refused file remembered by its hash."""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import streamlit as st

from uat_core.engine import checkpoint
from uat_core.engine.data import dataset_info
from uat_core.engine.errors import UATError

from .data import device
from .models import Picked

MAX_UPLOAD_MB = 50          # also server.maxUploadSize in .streamlit/config.toml
MAX_UPLOAD_PARAMS = 60_000_000      # the largest architecture an upload may name (WRN 32-10 has 46 M)
_REFUSED: dict[tuple[str, str], str] = {}    # (sha256, dataset) -> the one-line refusal, process-wide


def load_upload(data: bytes, ds: str) -> Picked:
    """Check and load an uploaded checkpoint of ours (weights only: nothing in it is unpickled as code)."""
    if len(data) > MAX_UPLOAD_MB * 2 ** 20:
        raise UATError(f"the file is {len(data) / 2 ** 20:.0f} MB; uploads are capped at {MAX_UPLOAD_MB} MB")
    sha = hashlib.sha256(data).hexdigest()
    cache = st.session_state.setdefault("_uploads", {})
    if sha in cache:
        return cache[sha]
    refused = _REFUSED.get((sha, ds))
    if refused is not None:                           # the same file again (every rerun): no second look
        raise UATError(refused)
    try:
        picked = _check_and_load(data, sha, ds)
    except UATError as e:
        _REFUSED[(sha, ds)] = str(e)
        raise
    cache.clear()                       # keep one uploaded model per session
    cache[sha] = picked
    return picked


def _check_and_load(data: bytes, sha: str, ds: str) -> Picked:
    """Metadata first (types, architecture, parameter count on the meta device, channels, image size), then
    the model is built: a small file naming a huge architecture is refused without allocating it."""
    info = dataset_info(ds)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.pt"
        path.write_bytes(data)
        try:
            obj = checkpoint.read_checkpoint(path)
            meta = checkpoint.check_meta(obj["meta"], path)
            if meta["num_classes"] != info["num_classes"] or meta["in_channels"] != info["shape"][0] \
                    or meta.get("dataset") != ds or int(meta.get("image_size", 0)) != info["shape"][1]:
                size = meta.get("image_size")
                raise UATError(f"the uploaded model takes {meta['in_channels']}-channel {size}×{size} images with "
                               f"{meta['num_classes']} classes ({meta.get('dataset')}), but the app is showing {ds}: "
                               "switch the dataset in the sidebar or upload a model for this dataset")
            checkpoint.check_weights_fit(meta, obj["state_dict"], MAX_UPLOAD_PARAMS, path)
            model, meta = checkpoint.load_checkpoint(path, expect={"num_classes": info["num_classes"],
                                                                    "shape": info["shape"]},
                                                     device=device(), max_params=MAX_UPLOAD_PARAMS)
        except UATError as e:
            raise UATError(f"{str(e).replace(str(path), 'the uploaded file')} (the app is showing {ds})") from None
    for p in model.parameters():        # frozen once at load: no code path toggles it per call
        p.requires_grad_(False)
    return Picked(model.eval(), f"upload:{sha[:12]}", f"uploaded {meta['arch']} ({sha[:8]})", True)

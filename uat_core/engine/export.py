"""Export a perturbation: tensors in pixel units, and pictures people can look at.

Pictures of δ use one fixed scale, δ/(2ε) + 0.5, so mid-grey means "no change", black −ε, white +ε;
every GIF frame uses the same scale, so the evolution of δ is comparable frame to frame.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .constraints import apply
from .errors import UATError
from .fileio import atomic_bytes

PERTURBATION_FILES = ("perturbation.pt", "perturbation.npy", "perturbation.png", "perturbation.gif")


def _to_pil(x: torch.Tensor, scale: int = 1) -> Image.Image:
    """(C,H,W) float in [0,1] -> PIL image (RGB or L), magnified ``scale``× with nearest neighbours."""
    t = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    a = t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()
    img = Image.fromarray(a)
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


def delta_image(delta: torch.Tensor, eps: float, scale: int = 8) -> Image.Image:
    """δ (C,H,W, pixel units) shown as δ/(2ε)+0.5; ``eps`` in pixel units (8/255 for ε = 8)."""
    return _to_pil(delta / (2 * eps) + 0.5, scale)


def image_grid(images: torch.Tensor, scale: int = 3, captions: list[str] | None = None,
               colors: list[str] | None = None, ncol: int = 8) -> Image.Image:
    """Tile (N,C,H,W) images in [0,1] with an optional caption line under each."""
    n = len(images)
    tiles = [_to_pil(im, scale).convert("RGB") for im in images]
    w, h = tiles[0].size
    cap = 14 if captions else 0
    ncol = min(ncol, n)
    nrow = (n + ncol - 1) // ncol
    grid = Image.new("RGB", (ncol * (w + 4), nrow * (h + cap + 4)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncol)
        x0, y0 = c * (w + 4) + 2, r * (h + cap + 4) + 2
        grid.paste(t, (x0, y0))
        if captions:
            draw.text((x0, y0 + h + 1), captions[i][: max(4, w // 6)], fill=(colors or ["black"] * n)[i], font=font)
    return grid


def comparison_grid(clean: torch.Tensor, delta: torch.Tensor, classes, clean_pred, pert_pred,
                    labels, pert_conf=None, scale: int = 3, ncol: int = 8) -> Image.Image:
    """Two rows per block: clean images with predictions, then x+δ with predictions (red = wrong)."""
    pert = apply(clean.float(), delta.float())
    n = len(clean)
    imgs, caps, cols = [], [], []
    for start in range(0, n, ncol):
        sl = range(start, min(n, start + ncol))
        for row, (xs, preds) in enumerate(((clean, clean_pred), (pert, pert_pred))):
            for i in sl:
                imgs.append(xs[i])
                p = int(preds[i])
                c = f"{classes[p]}"
                if row == 1 and pert_conf is not None:
                    c += f" {100 * float(pert_conf[i]):.0f}%"
                caps.append(c)
                cols.append("black" if p == int(labels[i]) else "red")
    return image_grid(torch.stack(imgs), scale, caps, cols, ncol=min(ncol, n))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes(snapshots, eps: float, scale: int = 8, ms: int = 120) -> bytes:
    """Animated GIF of δ snapshots [(step, δ), ...] or [δ, ...], all at the same δ/(2ε)+0.5 scale."""
    frames = [delta_image(s[1] if isinstance(s, tuple) else s, eps, scale).convert("RGB") for s in snapshots]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=ms, loop=0)
    return buf.getvalue()


def npy_bytes(delta: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, delta.detach().cpu().float().numpy())
    return buf.getvalue()


def pt_bytes(delta: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(delta.detach().cpu().float().clone(), buf)
    return buf.getvalue()


def save_perturbation(out: str | Path, delta: torch.Tensor, eps: float, snapshots=None, scale: int = 8) -> dict:
    """Write perturbation.{pt,npy,png,gif} atomically into ``out``; returns {kind: path}.

    δ must be finite (the callers check); ``eps`` in pixel units.
    """
    out = Path(out)
    if not torch.isfinite(delta).all():               # a real check (not an assert, which -O removes)
        raise UATError("the perturbation contains NaN or Inf: nothing was written")
    if snapshots and not all(torch.isfinite(s[1] if isinstance(s, tuple) else s).all() for s in snapshots):
        raise UATError("a perturbation snapshot contains NaN or Inf: nothing was written")
    paths = {
        "pt": atomic_bytes(out / "perturbation.pt", pt_bytes(delta)),
        "npy": atomic_bytes(out / "perturbation.npy", npy_bytes(delta)),
        "png": atomic_bytes(out / "perturbation.png", png_bytes(delta_image(delta, eps, scale))),
        "gif": atomic_bytes(out / "perturbation.gif", gif_bytes(snapshots or [delta], eps, scale)),
    }
    return {k: str(v) for k, v in paths.items()}


def load_perturbation(path: str | Path, shape=None) -> torch.Tensor:
    """A saved δ (.pt tensor or .npy array) as a float (C,H,W) tensor; checks shape and finiteness."""
    path = Path(path)
    if not path.is_file():
        raise UATError(f"perturbation {path} not found")
    try:
        if path.suffix == ".npy":
            d = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            with warnings.catch_warnings():      # torch warns about foreign pickles; our error says it all
                warnings.simplefilter("ignore")
                d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UATError(f"{path} is not a readable perturbation file ({type(e).__name__})") from None
    if not isinstance(d, torch.Tensor) or d.ndim != 3 or not d.is_floating_point():
        raise UATError(f"{path} does not hold a (C,H,W) float perturbation")
    if shape is not None and tuple(d.shape) != tuple(shape):
        raise UATError(f"{path} holds a perturbation of shape {tuple(d.shape)}, but the data's images are "
                       f"{tuple(shape)}")
    if not torch.isfinite(d).all():
        raise UATError(f"{path} contains NaN or Inf")
    return d.float()

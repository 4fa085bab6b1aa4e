"""Batched data augmentation on tensors (no per-image Python work in the hot loop)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(x: torch.Tensor, pad: int = 4, flip: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop after zero padding by ``pad`` and, optionally, random horizontal flip.

    x: (B,C,H,W) float; returns the same shape. Randomness from ``generator`` (CPU) for reproducibility.
    """
    B, C, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))                                 # (B,C,H+2p,W+2p)
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(x.device)
    rows = dy[:, None] + torch.arange(H, device=x.device)                   # (B,H)
    cols = dx[:, None] + torch.arange(W, device=x.device)                   # (B,W)
    b = torch.arange(B, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B,H,W,C)
    out = out.permute(0, 3, 1, 2)
    if flip:
        m = (torch.rand(B, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        out = torch.where(m, out.flip(3), out)
    return out.contiguous()

"""Pick the device: CUDA when present (cuDNN autotuning on), else the CPU; ``--device`` overrides."""
from __future__ import annotations

import torch

from .errors import UATError


def pick_device(name: str | None = None) -> torch.device:
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UATError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UATError("--device cuda asked for, but no CUDA GPU is visible")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UATError(f"--device {name}: there {'is' if n == 1 else 'are'} only {n} CUDA GPU"
                           f"{'' if n == 1 else 's'} (cuda:0{'' if n == 1 else f' to cuda:{n - 1}'})")
        torch.backends.cudnn.benchmark = True
    return dev

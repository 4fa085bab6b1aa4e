"""Shuffled minibatches, one way for every loop of the engine (Alg. 2, iDeepFool, training).

An epoch is a permutation ``order`` of the N images; global minibatch i is ``order[i·B·W:(i+1)·B·W]`` and, under
torchrun with W processes, rank r takes its r-th block of B. One process with batch B·W sees the same global
minibatches, which is what makes a run on W processes comparable with a run on one::

    for idx in shuffled_blocks(len(x), 128, generator, steps=math.ceil(len(x) / 128)):
        xb, yb = x[idx], y[idx]                 # (≤128,C,H,W), (≤128,)
"""
from __future__ import annotations

from collections.abc import Iterator

import torch


def block(order: torch.Tensor, i: int, batch_size: int, world: int = 1, rank: int = 0) -> torch.Tensor:
    """Rank ``rank``'s block of global minibatch ``i`` of the permutation ``order`` (possibly short or empty at
    the end of an epoch)."""
    start = (i * world + rank) * batch_size
    return order[start:start + batch_size]


def shuffled_blocks(n: int, batch_size: int, generator: torch.Generator, steps: int, world: int = 1, rank: int = 0,
                    device=None) -> Iterator[torch.Tensor]:
    """The index blocks of one epoch: a fresh permutation of n drawn from ``generator``, then ``steps`` blocks."""
    order = torch.randperm(n, generator=generator)
    if device is not None:
        order = order.to(device)
    for i in range(steps):
        yield block(order, i, batch_size, world, rank)

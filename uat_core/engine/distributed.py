"""Several processes under ``torchrun``: the process group, each rank's shard, and the collectives that
``train``, ``attack`` and ``eval`` share.

Under ``torchrun --nproc_per_node=N -m uat_core <command> ...`` every process runs the same command
(``WORLD_SIZE`` = N, ``RANK`` = r; one GPU each under NCCL, else the CPU under gloo):

    train    DistributedDataParallel (``training/loop.py``): global batch i of an epoch is
             ``order[i·B·N:(i+1)·B·N]`` of the epoch's permutation and rank r takes the r-th block of B (a
             streamed training set: rank r decodes only its block); the test split is then scored as by eval
    attack   Alg. 2 over the same blocks of its attack set (a distributed sampler): each rank sums the δ
             gradients and the clipped objective of its images, one all-reduce adds them up, and every rank
             divides by the minibatch's image count: the step of one process with batch B·N (to float
             tolerance: the sums are added in another order), so every rank holds the same δ. A streamed
             attack set is decoded in shards, one a rank, and gathered; the fixed-pattern baseline is scored
             on shards of it; the test split is scored as by eval. ``--strong`` and ``--method idf`` run in one
             process and refuse torchrun
    eval     rank r scores a contiguous shard of the test images (a streamed split: decodes only its shard);
             the counts (correct top-1 and top-5, fooled, per class) are summed across ranks, so the figures
             are exactly one process's

Only rank 0 prints results and writes files. Every rank makes the same checks of the command line before the
process group starts (only rank 0 prints the one-line error); a failure met later on one rank (a file that
does not decode, a disk that is full) is shared with :meth:`Group.agree`, so every rank stops with the same
line instead of waiting on the others. ``UAT_DIST_TIMEOUT`` (seconds, default 300) ends the collectives of
a rank whose peer died or hangs.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable, TypeVar, cast

import torch
import torch.distributed as dist

from .device import pick_device
from .errors import UATError

T = TypeVar("T")
_started = False        # set once this process starts (or tries to start) its process group


def world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def env_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def speaks() -> bool:
    """Whether this process prints a one-line error: rank 0 always; the others only once their process group
    was started (before that every rank checks the same command line, so rank 0's line says it all)."""
    return env_rank() == 0 or _started


def device_for(name: str = "auto"):
    """The device of this process: ``--device`` as given, except under torchrun, where ``auto`` and ``cuda``
    mean this process's own GPU (``cuda:LOCAL_RANK``)."""
    if world_size() > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if name == "auto":
            name = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        elif name == "cuda":
            name = f"cuda:{local}"
    return pick_device(name)


@dataclass
class Group:
    """This process's place among ``world`` processes, and the collectives the commands use. ``device``:
    where collective tensors travel (this process's GPU under NCCL, else the CPU)."""

    rank: int
    world: int
    device: torch.device

    # ---- shards ----------------------------------------------------------------------------------
    def span(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous shard of n items (sizes differ by at most one)."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    # ---- collectives -----------------------------------------------------------------------------
    def _reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        buf = t.detach().to(self.device, copy=True)
        dist.all_reduce(buf, op=op)
        return buf.to(t.device)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Σ over the ranks of ``t`` (a new tensor on ``t``'s device)."""
        return self._reduce(t, dist.ReduceOp.SUM)

    def max(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.MAX)

    def min(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.MIN)

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` on every rank (any picklable object)."""
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """The ranks' ``t`` (n_r, ...) stacked in rank order, (Σ n_r, ...), on every rank; n_r may differ."""
        n = torch.tensor([len(t)], dtype=torch.int64, device=self.device)
        counts = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(counts, n)
        sizes = [int(s) for s in counts]
        buf = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=self.device)
        buf[:len(t)] = t
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(parts, buf)
        return torch.cat([p[:s].to(t.device) for p, s in zip(parts, sizes)])

    def copy_from_first(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers of ``module`` (after DDP training the weights agree,
        but each rank's BatchNorm statistics took its own last minibatch), so that all score rank 0's model."""
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                buf = t.detach().to(self.device, copy=True)
                dist.broadcast(buf, src=0)
                t.copy_(buf)

    def agree(self, error: str | None) -> None:
        """Raise on every rank the one-line error of the first rank that met one (None: no error here)."""
        errors: list = [None] * self.world
        dist.all_gather_object(errors, error)
        first = next((e for e in errors if e), None)
        if first:
            raise UATError(first)

    def first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank, rank 0's first (it fills a cache or downloads, the others then read it); a
        UATError on any rank stops every rank with its line."""
        out: T | None = None
        err: str | None = None
        if self.rank == 0:
            try:
                out = fn()
            except UATError as e:
                err = str(e)
        err = self.broadcast(err)
        if err:
            raise UATError(err)
        if self.rank != 0:
            try:
                out = fn()
            except UATError as e:
                err = str(e)
        self.agree(err)
        return cast(T, out)         # agree() raised unless fn() returned on this rank: out is its result


def start(device: torch.device) -> Group | None:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on the CPU); None without torchrun."""
    global _started
    world = world_size()
    if world <= 1:
        return None
    _started = True
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # a rank that dies or hangs ends the others' collectives after this many seconds, never a hang
    timeout = datetime.timedelta(seconds=float(os.environ.get("UAT_DIST_TIMEOUT", "300")))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout)
    return Group(dist.get_rank(), dist.get_world_size(), device if backend == "nccl" else torch.device("cpu"))


def finish(group: Group | None, together: bool) -> None:
    """Leave the process group; ``together``: every rank got here without an error, so wait for the others
    first (a gloo peer that closes early can abort the others' threads)."""
    if group is None or not dist.is_initialized():
        return
    if together:
        try:
            dist.barrier()
        except Exception:
            pass
    dist.destroy_process_group()


def check_shards(world: int, what: str, n: int) -> None:
    """A one-line error when ``world`` processes would share fewer than ``world`` items (some rank idle)."""
    if world > n:
        raise UATError(f"--nproc_per_node={world} is more than the {n} {what} to share among the processes: "
                       f"run at most {n} processes (or use more images)")

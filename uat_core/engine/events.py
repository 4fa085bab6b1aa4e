"""Progress events: one stream that the CLI, the app and the notebooks all draw from.

Every long run (an attack, iDeepFool, training) is a :class:`Run`: iterate it to advance it one step
at a time and receive :class:`Event` objects, read its live state (``delta``, ``history``) at any moment,
call ``stop()`` to end it early (the next step finishes cleanly and the run yields its "done" event),
or call ``run()`` to drive it to the end with an optional tqdm bar and callback.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from .errors import UATError


@dataclass
class Event:
    kind: str                       # "step" | "epoch" | "done"
    step: int                       # iterations finished so far
    total: int                      # planned iterations
    epoch: int                      # current pass over the data (0-based)
    metrics: dict = field(default_factory=dict)   # loss, acc, ... of this step
    delta: torch.Tensor | None = None            # a (C,H,W) snapshot (cpu) every `snapshot_every` steps
    result: Any = None                           # set on the "done" event


class Run:
    """Base class: subclasses implement ``_steps()`` (a generator of Events ending with "done")."""

    total: int = 0
    result: Any = None

    def __init__(self) -> None:
        self._stop = False
        self._gen: Iterator[Event] | None = None
        self.history: list[dict] = []

    def stop(self) -> None:
        """Ask the run to finish after the current step; it still yields its "done" event."""
        self._stop = True

    @property
    def stopping(self) -> bool:
        return self._stop

    def __iter__(self) -> Iterator[Event]:
        if self._gen is None:
            self._gen = self._steps()
        return self._gen

    def __next__(self) -> Event:
        return next(iter(self))

    def advance(self, n: int) -> list[Event]:
        """Up to ``n`` events (fewer at the end): lets a UI move the run forward in small chunks."""
        out = []
        for ev in iter(self):
            out.append(ev)
            if len(out) >= n or ev.kind == "done":
                break
        return out

    @property
    def done(self) -> bool:
        return self.result is not None

    def run(self, callback: Callable[[Event], Any] | None = None, progress: bool = False, desc: str = ""):
        """Drive the run to the end. ``callback(event)`` returning False stops it early."""
        bar = None
        if progress:
            from tqdm.auto import tqdm  # deferred: only a run drawn with a progress bar needs tqdm
            bar = tqdm(total=self.total, desc=desc or type(self).__name__, unit="step", leave=False)
        for ev in self:
            if bar is not None and ev.kind == "step":
                bar.update(ev.step - bar.n)
                if ev.metrics:
                    bar.set_postfix({k: f"{v:.3f}" for k, v in ev.metrics.items()
                                     if isinstance(v, float)}, refresh=False)
            if callback is not None and callback(ev) is False:
                self.stop()
        if bar is not None:
            bar.close()
        return self.result

    def _steps(self) -> Iterator[Event]:  # pragma: no cover - abstract
        raise NotImplementedError


def check_finite(t: torch.Tensor, what: str) -> None:
    """Stop with a one-line message on NaN/Inf instead of writing garbage."""
    if not torch.isfinite(t).all():
        raise UATError(f"{what} became NaN or Inf: lower the step size or learning rate; nothing was written")

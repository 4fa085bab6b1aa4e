"""The sidebar's way from the digits to CIFAR-10: a button that downloads it, with a progress bar.

The download itself is :func:`uat_core.engine.download.download_cifar10`, into the folder the command line
downloads to, so that ``state.data.available_datasets()`` (which looks there on every run) offers cifar10 as
soon as it ends. Here is only its Streamlit side:

* One download per server, in a thread of its own: a script run stops at the visitor's next click, a
  thread does not, so the visitor may look at other pages meanwhile; every session on the digits sees
  the same bar, and a second press cannot start a second download.
* A fragment redraws the bar every ``EVERY`` seconds while the thread runs, and reruns the whole app once
  it ends: the dataset box then offers cifar10, or the sidebar shows the one-line error.
* In sync mode (``webapp.live.sync_mode``: AppTest) the download runs in the script run that presses the
  button, drawing the same bar from its progress callback.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import streamlit as st

from uat_core.engine import download as D
from uat_core.engine.errors import UATError

from .live import sync_mode

EVERY = 0.5                 # seconds between redraws of the bar while the download runs
BUTTON_KEY = "cifar10_download"
_SEEN = "_cifar10_seen"     # session: the number of the download this session started or watched
_ERR = "_cifar10_err"       # session: the one-line error of that download
_NEW = "_cifar10_new"       # session: CIFAR-10 has just arrived (say so once)


@dataclass
class Download:
    """The state of one download, shared by every session (written by its thread, read by the sidebars)."""
    number: int
    done: int = 0
    total: int = field(default_factory=lambda: D.CIFAR10_BYTES)
    running: bool = True
    error: str | None = None
    started: float = field(default_factory=time.monotonic)

    def progress(self, done: int, total: int) -> None:
        """``uat_core.engine.download``'s progress callback."""
        self.done, self.total = done, total

    def text(self) -> str:
        """The bar's caption: megabytes so far, of all, and the rate; or what comes after the last byte."""
        if self.total and self.done >= self.total:
            return "Checking and unpacking CIFAR-10 …"
        rate = self.done / max(1e-3, time.monotonic() - self.started)
        return (f"Downloading CIFAR-10: {self.done / 1e6:.0f} of {self.total / 1e6:.0f} MB"
                + (f" · {rate / 1e6:.1f} MB/s" if self.done else ""))

    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


_LOCK = threading.Lock()
_CURRENT: Download | None = None        # the latest download of this server process


def current() -> Download | None:
    """The latest download started in this process (running or ended), or None."""
    return _CURRENT


def _run(dl: Download, also: Callable[[Download], object] | None = None) -> None:
    """Download (in whichever thread calls this) and record how it ended; ``also(dl)`` after each chunk."""
    def progress(done: int, total: int) -> None:
        dl.progress(done, total)
        if also is not None:
            also(dl)
    try:
        D.download_cifar10(progress=progress)
    except UATError as e:
        dl.error = str(e)
    except Exception as e:          # a bug: keep its traceback in the server's log, and one line on screen
        dl.error = f"the CIFAR-10 download failed: {type(e).__name__}: {' '.join(str(e).split())}"
        raise
    finally:
        dl.running = False


def start(in_thread: bool = True, also: Callable[[Download], object] | None = None) -> Download:
    """Start a download, or join the one running: in a thread of its own, or in this one (``in_thread=False``,
    calling ``also(dl)`` after each chunk). Returns its :class:`Download`."""
    global _CURRENT
    with _LOCK:
        if _CURRENT is not None and _CURRENT.running:
            return _CURRENT
        dl = _CURRENT = Download(number=(_CURRENT.number + 1) if _CURRENT else 1)
    if in_thread:
        threading.Thread(target=_run, args=(dl,), name="uat-cifar10-download", daemon=True).start()
    else:
        _run(dl, also)
    return dl


def _press() -> None:
    """The button's callback: forget this session's last error; the script run below starts the download."""
    st.session_state.pop(_ERR, None)


def offer(options: list[str]) -> None:
    """Below the dataset box (call inside ``st.sidebar``): where cifar10 is not in ``options``, the download
    button with the archive's size, the bar of a running download and the error of a failed one; once a
    download this session started or watched has ended well, a one-time note that cifar10 is there."""
    dl = current()
    if dl is not None and not dl.running and st.session_state.get(_SEEN) == dl.number:
        del st.session_state[_SEEN]                     # the download this session saw has ended: say how
        if dl.error:
            st.session_state[_ERR] = dl.error
        else:
            st.session_state[_NEW] = True
    if "cifar10" in options:
        if st.session_state.pop(_NEW, False):
            st.success("CIFAR-10 is here: choose **cifar10** under Dataset.", icon=":material/download_done:")
        return
    if dl is not None and dl.running and not sync_mode():
        st.session_state[_SEEN] = dl.number
        _live_bar()
        return
    st.caption("CIFAR-10 is not on this machine: digits only.")
    size = f"{D.CIFAR10_BYTES / 1e6:.0f} MB"
    pressed = st.button(f"Download CIFAR-10 ({size})", key=BUTTON_KEY, on_click=_press,
                        icon=":material/download:", width="stretch",
                        help=f"torchvision's CIFAR-10 archive ({D.CIFAR10_BYTES:,} bytes, "
                             f"{D.CIFAR10_BYTES / 2 ** 20:.0f} MiB) from {D.CIFAR10_URL.split('/')[2]}, "
                             f"unpacked into {D.cifar10_root()}, where the command line looks for it too "
                             "(about 190 MB on disk). Or set UAT_DATA to a CIFAR-10 copy.")
    if pressed:
        if sync_mode():
            bar = st.progress(0.0, text="Connecting …")
            dl = start(in_thread=False, also=lambda d: bar.progress(d.fraction(), text=d.text()))
        else:
            dl = start()
        st.session_state[_SEEN] = dl.number
        st.rerun()              # the next run draws the running download's bar, or how it ended
    err = st.session_state.get(_ERR)
    if err:
        st.error(err, icon=":material/cloud_off:")


def _live_bar() -> None:
    """The running download's bar, redrawn every ``EVERY`` s; once it has ended, the whole app runs again."""
    @st.fragment(run_every=EVERY)
    def _bar():
        dl = current()
        if dl is None or not dl.running:
            st.rerun()                  # the full run offers cifar10 in the dataset box, or shows the error
        st.progress(dl.fraction(), text=dl.text())
        st.caption("The other pages work meanwhile: the download goes on.")
    _bar()

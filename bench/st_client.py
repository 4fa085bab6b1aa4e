"""A minimal Streamlit client over the app's websocket (``/_stcore/stream``), for load benchmarks.

A browser tab is a heavy client: on a 2-core machine, eight headless Chromium renderers take most of the CPU
the server needs. This client speaks the same protocol as Streamlit's frontend (protobuf ``BackMsg`` up,
``ForwardMsg`` down; the classes ship with Streamlit) and does only what a visitor's tab does for the pages
measured here:

* open a page (``page_name`` = its URL path, with a query string), which runs the script;
* press a button (a rerun whose widget states carry the button's trigger; the other widgets keep the values
  the server holds for the session, as they would in a tab where nothing else was touched);
* keep each ``st.fragment(run_every=...)`` ticking: the server sends ``auto_rerun`` with an interval, and the
  client asks for a fragment rerun at that pace until ``stop_auto_rerun`` or the next full script run (as the
  frontend's ``handleAutoRerun`` / ``cleanupAutoReruns`` do);
* keep the text of each element it receives (markdown, alerts, progress bars, metrics, headings), so a caller
  can wait for a line to appear.

It draws nothing and evaluates no JavaScript, so it measures the server: time from a click to the server's
first message about it, and to its result. Streamlit's internal protocol can change between releases; the
benchmark's ``--client browser`` mode drives real Chromium instead.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from tornado.websocket import websocket_connect

def element_text(el) -> str:
    """The visible text of one element (empty for the kinds a load test does not look at)."""
    kind = el.WhichOneof("type")
    if kind in ("markdown", "text", "heading", "alert", "exception"):
        part = getattr(el, kind)
        return " ".join(str(getattr(part, f)) for f in ("body", "message", "type") if hasattr(part, f))
    if kind == "progress":
        return el.progress.text
    if kind == "metric":
        return f"{el.metric.label}: {el.metric.body}"
    return ""


@dataclass
class Run:
    """What one script run (full or fragment) sent."""
    fragment: bool
    texts: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    exception: bool = False
    status: int | None = None               # the script_finished value once it ended


class Session:
    """One visitor: ``await s.open(page, query)``, ``await s.click(key)``; ``s.runs`` holds every run."""

    def __init__(self, base: str):
        self.url = base.replace("http://", "ws://").rstrip("/") + "/_stcore/stream"
        self.ws = None
        self.query = ""
        self.page_hash = ""
        self.buttons: dict[str, str] = {}           # widget key → widget id
        self.runs: list[Run] = []
        self.on_text = None                          # callback(text) for each element text received
        self._timers: dict[str, asyncio.Task] = {}
        self._every: dict[str, float] = {}
        self._reader: asyncio.Task | None = None
        self.closed = False

    async def open(self, page: str, query: str = "") -> None:
        self.ws = await websocket_connect(self.url, max_message_size=256 << 20)
        self._reader = asyncio.ensure_future(self._read())
        self.query = query
        await self._rerun(page_name=page)

    async def click(self, key: str) -> None:
        """Press the button whose widget key is ``key`` (it must have been drawn)."""
        bid = self.buttons.get(key)
        if bid is None:
            raise KeyError(f"no button with key {key!r} on the page (have {sorted(self.buttons)})")
        await self._rerun(trigger=bid)

    def last_full_run(self) -> Run | None:
        full = [r for r in self.runs if not r.fragment and r.status == ForwardMsg.FINISHED_SUCCESSFULLY]
        return full[-1] if full else None

    async def close(self) -> None:
        self.closed = True
        for t in self._timers.values():
            t.cancel()
        if self.ws is not None:
            self.ws.close()
        if self._reader is not None:
            self._reader.cancel()

    # ---- the protocol ----------------------------------------------------------------------------------

    async def _rerun(self, page_name: str = "", trigger: str | None = None, fragment: str = "",
                     auto: bool = False) -> None:
        msg = BackMsg()
        cs = msg.rerun_script
        cs.query_string = self.query
        cs.page_script_hash = self.page_hash
        cs.page_name = page_name
        if trigger is not None:
            w = cs.widget_states.widgets.add()
            w.id, w.trigger_value = trigger, True
        if fragment:
            cs.fragment_id, cs.is_auto_rerun = fragment, auto
        await self.ws.write_message(msg.SerializeToString(), binary=True)

    async def _tick(self, fragment: str, interval: float) -> None:
        while not self.closed:
            await asyncio.sleep(interval)
            await self._rerun(fragment=fragment, auto=True)

    async def _read(self) -> None:
        while True:
            raw = await self.ws.read_message()
            if raw is None:
                self.closed = True
                return
            msg = ForwardMsg()
            msg.ParseFromString(raw)
            kind = msg.WhichOneof("type")
            if kind == "new_session":
                frag = bool(msg.metadata.run.fragment_ids)
                if not frag:                        # a full run: the frontend drops every fragment timer
                    for t in self._timers.values():
                        t.cancel()
                    self._timers.clear()
                    self._every.clear()
                self.runs.append(Run(fragment=frag))
            elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                el = msg.delta.new_element
                if el.WhichOneof("type") == "button" and "-" in el.button.id:
                    self.buttons[el.button.id.rsplit("-", 1)[-1]] = el.button.id
                text = element_text(el)
                if self.runs:
                    if el.WhichOneof("type") == "metric":
                        self.runs[-1].metrics.append(el.metric.label)
                    if el.WhichOneof("type") == "exception":
                        self.runs[-1].exception = True
                    if text:
                        self.runs[-1].texts.append(text)
                if text and self.on_text is not None:
                    self.on_text(text)
            elif kind == "navigation":              # the page this run shows (st.navigation's choice)
                self.page_hash = msg.navigation.page_script_hash
            elif kind == "auto_rerun":
                fid, every = msg.auto_rerun.fragment_id, msg.auto_rerun.interval
                if fid and self._every.get(fid) != every:     # new, or a new pace: (re)start its timer
                    if fid in self._timers:
                        self._timers.pop(fid).cancel()
                    self._timers[fid], self._every[fid] = asyncio.ensure_future(self._tick(fid, every)), every
            elif kind == "stop_auto_rerun":
                for fid in msg.stop_auto_rerun.fragment_ids:
                    t = self._timers.pop(fid, None)
                    self._every.pop(fid, None)
                    if t is not None:
                        t.cancel()
            elif kind == "script_finished" and self.runs:
                self.runs[-1].status = msg.script_finished


async def wait_for(cond, timeout: float, step: float = 0.02) -> bool:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if cond():
            return True
        await asyncio.sleep(step)
    return False

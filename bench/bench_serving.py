"""Load benchmark of the app: K visitors press Run on the digits attack lab at the same moment.

    python bench/bench_serving.py                       # K = 1, 4, 8, 16
    python bench/bench_serving.py --sessions 1,4 --markdown

It starts ``streamlit run app.py`` on a free loopback port (digits only), opens K independent Streamlit
sessions, loads the attack lab with the same small settings in each, then presses Run in all of them within
a fraction of a second. The sessions are, with ``--client ws`` (the default), clients of Streamlit's own
websocket protocol (``bench/st_client.py``: what a tab sends and receives, without drawing anything), so the
two cores measure the server and not K renderers; with ``--client browser``, headless Chromium through
Playwright (one browser context each), which also counts each tab's own drawing on the same two cores.
For each session it records

* **feedback**: seconds from its click to the first sign of life on its page: its queue position
  ("number k in the queue"), the "Starting …" bar or its live progress line ("of computation");
* **result**: seconds from its click to its finished result (the "Seconds" metric of a result that is its own,
  not the precomputed default the page opens with);
* errors: an exception box, or no result within the time limit.

Per K it prints the worst feedback, the first and the last result, and the ratio of the last result to
K × the single-session time measured in the same run (the scheduler runs jobs one after another on a
2-core machine, so the target is ≤ 1.3). Targets: every feedback ≤ 2 s, no errors, ratio ≤ 1.3 at K = 8.
``--client browser`` needs ``/usr/bin/chromium`` and playwright (``requirements-dev.txt``).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
URL = "attack_lab?lab_size=250&lab_epochs=2"          # a run of a few seconds on one core
FEEDBACK = ("in the queue", "of computation", "Starting …")
DEFAULT_NOTE = "to compute the current settings"         # the page shows the precomputed default, not its own


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", default="1,4,8,16", help="comma-separated K values (1 must come first)")
    ap.add_argument("--url", default=URL, help="the page and settings every session runs (default %(default)s)")
    ap.add_argument("--client", choices=("ws", "browser"), default="ws",
                    help="ws: Streamlit's websocket protocol, no drawing (default); browser: headless Chromium")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a session may wait for its result")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table for docs/benchmarks.md")
    return ap.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "UAT_DATA"}
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless",
                             "true", "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read().strip() == b"ok":
                return proc
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"error: streamlit did not start (log: {log})")


def idle(pg, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pg.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').count():
            return
        pg.wait_for_timeout(100)


def one_round(browser, base: str, k: int, url: str, timeout: float, seed0: int) -> list[dict]:
    """K sessions click Run together; returns one row per session.

    Every session gets its own seed (``lab_seed``), never used before in this server: the app shares finished
    results between sessions with the same settings, so with one seed for all a page would open showing an
    earlier session's result, and each session's own run is what is measured here."""
    ctxs = [browser.new_context(viewport={"width": 1280, "height": 900}) for _ in range(k)]
    pages = [c.new_page() for c in ctxs]
    for i, pg in enumerate(pages):
        pg.goto(f"{base}/{url}{'&' if '?' in url else '?'}lab_seed={seed0 + i}")
    for pg in pages:
        pg.get_by_role("heading", name="Universal attack lab").first.wait_for(timeout=120_000)
        idle(pg)
        if not pg.get_by_text(DEFAULT_NOTE).count():                          # the page shows the default result
            raise SystemExit("error: a page already shows a result for its own settings before Run (a reused seed?)")
    rows = [{"feedback": None, "result": None, "error": None} for _ in pages]
    clicked = []
    for pg in pages:                                     # all K clicks within a fraction of a second
        pg.locator(".st-key-lab_run").get_by_role("button").click(no_wait_after=True)
        clicked.append(time.perf_counter())
    while any(r["result"] is None and r["error"] is None for r in rows):
        for pg, r, t0 in zip(pages, rows, clicked):
            if r["result"] is not None or r["error"] is not None:
                continue
            now = time.perf_counter()
            try:
                if r["feedback"] is None and any(pg.get_by_text(f).count() for f in FEEDBACK):
                    r["feedback"] = now - t0
                # its own result: a finished script run (no stale elements of the page before the click left),
                # the result's "Seconds" metric, and no note that the result on screen is another one
                if r["feedback"] is not None and \
                        pg.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').count() and \
                        pg.get_by_text("Seconds", exact=True).count() and \
                        not pg.get_by_text(DEFAULT_NOTE).count():
                    r["result"] = now - t0
                elif pg.locator('[data-testid="stException"]').count():
                    r["error"] = "exception on the page"
            except Exception as e:                       # a page that stopped responding
                r["error"] = type(e).__name__
            if r["result"] is None and r["error"] is None and now - t0 > timeout:
                r["error"] = "no result in time"
        time.sleep(0.05)
    for c in ctxs:
        c.close()
    return rows


def ws_round(base: str, k: int, url: str, timeout: float, seed0: int) -> list[dict]:
    """:func:`one_round` with websocket clients (``bench/st_client.py``) instead of browsers."""
    if str(Path(__file__).parent) not in sys.path:          # bench/st_client.py, beside this script
        sys.path.insert(0, str(Path(__file__).parent))
    import st_client as C

    page, _, query = url.partition("?")

    async def go():
        sessions = [C.Session(base) for _ in range(k)]
        for i, s in enumerate(sessions):
            await s.open(page, f"{query}{'&' if query else ''}lab_seed={seed0 + i}")
        for s in sessions:
            if not await C.wait_for(lambda s=s: s.last_full_run() is not None, 120):
                raise SystemExit("error: a session's page did not finish loading in 120 s")
            if not any(DEFAULT_NOTE in t for t in s.last_full_run().texts):
                raise SystemExit("error: a page already shows a result for its own settings before Run "
                                 "(a reused seed?)")
        rows = [{"feedback": None, "result": None, "error": None} for _ in sessions]
        before = [len(s.runs) for s in sessions]
        # the sidebar's "N steps · …" line: the settings the result must still have (a click sends only the
        # button's trigger; the other widgets keep the values the server holds, as in an untouched tab)
        plan = [[t for t in s.last_full_run().texts if " steps · " in t] for s in sessions]
        if not all(plan):
            raise SystemExit("error: the page shows no 'N steps · …' line to check the settings by")
        for s, r in zip(sessions, rows):
            def seen(text, r=r):
                if r["feedback"] is None and any(f in text for f in FEEDBACK):
                    r["feedback"] = time.perf_counter() - r["t0"]
            s.on_text = seen
            r["t0"] = time.perf_counter()
            await s.click("lab_run")
        while any(r["result"] is None and r["error"] is None for r in rows):
            for s, r, n0, want in zip(sessions, rows, before, plan):
                if r["result"] is not None or r["error"] is not None:
                    continue
                now = time.perf_counter()
                runs = s.runs[n0:]
                if any(run.exception for run in runs):
                    r["error"] = "exception on the page"
                elif (done := next((run for run in runs if not run.fragment and "Seconds" in run.metrics
                                    and run.status == C.ForwardMsg.FINISHED_SUCCESSFULLY
                                    and not any(DEFAULT_NOTE in t for t in run.texts)), None)) is not None:
                    if [t for t in done.texts if " steps · " in t] != want:
                        r["error"] = "the result's settings differ from the page's before the click"
                    else:
                        r["result"] = now - r["t0"]
                elif s.closed:
                    r["error"] = "connection closed"
                elif now - r["t0"] > timeout:
                    r["error"] = "no result in time"
            await asyncio.sleep(0.02)
        for s in sessions:
            await s.close()
        return rows

    return asyncio.run(go())


def main(argv=None) -> int:
    args = parse(argv)
    ks = [int(k) for k in args.sessions.split(",") if k.strip()]
    if not ks or ks[0] != 1 or any(k < 1 for k in ks):
        print("error: --sessions must start with 1 (the single-session baseline) and hold positive counts",
              file=sys.stderr)
        return 2
    if args.client == "browser":
        if not CHROMIUM.exists():
            print("error: --client browser needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
                  file=sys.stderr)
            return 2
        try:
            from playwright.sync_api import sync_playwright  # noqa: F401
        except ImportError:
            print("error: --client browser needs playwright (pip install -r requirements-dev.txt)", file=sys.stderr)
            return 2
    log = ROOT / "runs" / "bench_serving.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_app(port, log)
    base = f"http://127.0.0.1:{port}"
    table, single = [], None
    try:
        with contextlib.ExitStack() as stack:
            if args.client == "browser":
                from playwright.sync_api import sync_playwright
                pw = stack.enter_context(sync_playwright())
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                   "--disable-renderer-backgrounding",
                                                   "--disable-background-timer-throttling"])
                stack.callback(browser.close)

                def round_(k, seed):
                    return one_round(browser, base, k, args.url, args.timeout, seed)
            else:
                def round_(k, seed):
                    return ws_round(base, k, args.url, args.timeout, seed)
            seed = 1000
            round_(1, seed)                      # warm-up: imports, caches, first run
            for k in ks:
                seed += 100
                rows = round_(k, seed)
                res = [r["result"] for r in rows if r["result"] is not None]
                fb = [r["feedback"] for r in rows if r["feedback"] is not None]
                errors = [r["error"] for r in rows if r["error"]]
                if len(fb) < len(rows):
                    errors += ["no feedback"] * (len(rows) - len(fb))
                if k == 1 and res:
                    single = res[0]
                last = max(res) if res else float("nan")
                ratio = last / (k * single) if single else float("nan")
                table.append((k, max(fb) if fb else float("nan"), min(res) if res else float("nan"), last, ratio,
                              len(errors)))
                print(f"K = {k:2d}: worst feedback {table[-1][1]:.2f} s, first result {table[-1][2]:.1f} s, last "
                      f"{last:.1f} s ({ratio:.2f}× K × single), errors {len(errors)} {errors[:3]}",
                      file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    lines = ["| sessions K | worst time to feedback (s) | first result (s) | last result (s) | "
             "last / (K × single) | errors |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {fb:.2f} | {first:.1f} | {last:.1f} | {ratio:.2f} | {err} |"
              for k, fb, first, last, ratio, err in table]
    if args.markdown:
        cmd = "python bench/bench_serving.py " + " ".join(sys.argv[1:] if argv is None else argv)
        print(f"Command: `{cmd}`  \n{_dt.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} logical "
              f"CPUs, page `{args.url}`, clients: {args.client}.\n")
    print("\n".join(lines))
    ok = all(fb <= 2.0 and err == 0 for _, fb, _, _, _, err in table) and \
        all(ratio <= 1.3 for k, _, _, _, ratio, _ in table if k == 8)
    print(f"\ntargets {'met' if ok else 'NOT met'} (feedback ≤ 2 s at every K, no errors, K = 8 within 1.3× of "
          "K × single)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Repository-wide pytest setup: notebooks run in their fast mode, CIFAR-10 found where CI keeps it, and how
``python -m pytest`` shares the tests among its pytest-xdist workers (``-n auto`` in pyproject.toml).

Every test is scheduled on its own, except two groups that each stay on one worker, in order:

- ``tests/test_browser_e2e.py`` and the notebooks (nbmake), one after another: two Jupyter kernels starting at the same
  moment can pick the same ports (jupyter_client issue 487); and with the notebooks and the browser tests
  (Chromium and the app server, many threads) on different workers, one notebook ran 3-4 times slower than
  alone (02: 315 s, not 14 s; in another run 03: 425 s, not 106 s). The browser tests' module fixture (the app
  server and a browser) is also built only once this way;
- ``tests/test_report.py``: its module fixture (a report) takes a minute and would be built once per worker.

xdist's own ``--dist loadgroup`` would do this from ``xdist_group`` marks, but pytest-xdist 3.8 cannot rename
pytest 9.2's node ids, so those marks have no effect; this scheduler works from the node ids alone. The
engine's own fixtures are in ``tests/conftest.py``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("UAT_FAST", "1")
_shared = Path(__file__).resolve().parent.parent / "shared" / "data" / "cifar10-jpeg"
if "UAT_DATA" not in os.environ and _shared.is_dir():
    os.environ["UAT_DATA"] = str(_shared)

SERIAL_FILES = ("tests/test_browser_e2e.py",)       # with the notebooks, on one worker
GROUPED_FILES = ("tests/test_report.py",)


@pytest.hookimpl(optionalhook=True)                # a hook of pytest-xdist: harmless where it is not installed
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":          # --dist each / loadfile / ... asked for by name: theirs
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Grouped(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path.endswith(".ipynb") or path in SERIAL_FILES:
                return "notebooks and browser"
            return path if path in GROUPED_FILES else nodeid

    return Grouped(config, log)

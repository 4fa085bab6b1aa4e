"""Repository-wide pytest setup: notebooks run in their fast mode, CIFAR-10 found where CI keeps it, and how
``python -m pytest`` shares the tests among its pytest-xdist workers (``-n auto`` in pyproject.toml).

Every test is scheduled on its own, except three groups that each stay on one worker, in order:

- the notebooks (nbmake): two Jupyter kernels that start at the same moment can pick the same ports
  (jupyter_client issue 487), and a notebook then waited minutes for its kernel;
- ``tests/test_report.py`` and ``tests/test_browser_e2e.py``: their module fixtures (a report, an app server
  with a browser) take a minute to build and would otherwise be built once per worker.

xdist's own ``--dist loadgroup`` would do this from ``xdist_group`` marks, but pytest-xdist 3.8 cannot rename
pytest 9.2's node ids, so those marks have no effect; this scheduler works from the node ids alone. The
engine's own fixtures are in ``tests/conftest.py``.
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("UAT_FAST", "1")
_shared = Path(__file__).resolve().parent.parent / "shared" / "data" / "cifar10-jpeg"
if "UAT_DATA" not in os.environ and _shared.is_dir():
    os.environ["UAT_DATA"] = str(_shared)

GROUPED_FILES = ("tests/test_report.py", "tests/test_browser_e2e.py")


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":          # --dist each / loadfile / ... asked for by name: theirs
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Grouped(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path.endswith(".ipynb"):
                return "notebooks"
            return path if path in GROUPED_FILES else nodeid

    return Grouped(config, log)

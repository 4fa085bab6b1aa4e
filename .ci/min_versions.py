"""CI step: the lowest versions pyproject.toml declares, installed once, must run the app and the notebook helpers.

    python .ci/min_versions.py            # from the repository root, inside the project's virtual environment

Reads the lower bounds (``name>=X``) of the runtime dependencies and of the ``app`` and ``notebooks`` extras
from pyproject.toml and installs exactly those versions (``name==X``, with whatever they depend on) into a
separate folder, ``.ci/min-env`` (git-ignored), which goes first on ``PYTHONPATH``: the virtual environment's
newer copies are shadowed, nothing in it changes. Then, with those versions, it

1. checks that each imported package is the declared minimum (so the shadowing really happened);
2. imports every module of ``uat_core`` and ``webapp`` and the notebooks' helpers, and builds a live
   ``plotly.graph_objects.FigureWidget`` (anywidget, as the notebooks do);
3. runs the app's page tests (``tests/test_app.py``: every page's default view through Streamlit's AppTest,
   the home page, the URL round trips of every page and the Streamlit shim's guard).

torch and torchvision are the exception: their declared bounds (2.2 / 0.17) are not installed here (several GB
of CUDA wheels; the pinned wheels of requirements.txt stay in use). Exit status 0 when all of it passes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / ".ci" / "min-env"
KEEP = {"torch", "torchvision"}              # see the module docstring
TESTS = ["tests/test_app.py", "-k",
         "default_view or home or shared_link or dataset_link or round_trip or shim or survive"]


def minimums() -> dict[str, str]:
    """{distribution name: its declared lower bound} for the runtime and the app and notebooks extras."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in ("app", "notebooks"):
        reqs += meta["optional-dependencies"][extra]
    out: dict[str, str] = {}
    for line in reqs:
        r = Requirement(line)
        if r.name in KEEP:
            continue
        low = [s.version for s in r.specifier if s.operator == ">="]
        if not low:
            raise SystemExit(f"error: {line!r} in pyproject.toml declares no lower bound (name>=X)")
        out[r.name] = low[0]
    return out


CHECK = r"""
import importlib, importlib.metadata as md, pkgutil, sys
from packaging.version import Version
want = dict(a.split("==") for a in sys.argv[1:])
wrong = {n: (md.version(n), v) for n, v in want.items() if Version(md.version(n)) != Version(v)}
assert not wrong, f"not the declared minimum (found, declared): {wrong}"
import uat_core, webapp
mods = [m.name for p in (uat_core, webapp) for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")
        if not m.name.endswith(".__main__")]
for m in mods:
    importlib.import_module(m)
from uat_core import notebook, plots
from uat_core.recipes import experiments
import plotly.graph_objects as go
w = go.FigureWidget(go.Figure(go.Scatter(y=[1, 2])))
assert len(w.data) == 1
print(f"imported {len(mods)} modules and built a FigureWidget with", ", ".join(f"{n} {v}" for n, v in want.items()))
"""


def main() -> int:
    mins = minimums()
    pins = [f"{n}=={v}" for n, v in mins.items()]
    print("minimum versions:", " ".join(pins), flush=True)
    done = TARGET / ".installed"
    if not done.exists() or done.read_text() != "\n".join(pins):
        shutil.rmtree(TARGET, ignore_errors=True)            # pip --target does not replace what is there
        TARGET.mkdir(parents=True)
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--target",
                            str(TARGET), *pins], capture_output=True, text=True)
        if r.returncode:
            print(r.stdout[-4000:], r.stderr[-4000:], sep="\n")
            print("error: pip could not install the declared minimum versions together (see above)")
            return r.returncode
        done.write_text("\n".join(pins))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TARGET), str(ROOT)])}
    if subprocess.run([sys.executable, "-c", CHECK, *pins], cwd=ROOT, env=env).returncode:
        print("error: the app or the notebook helpers do not import with the declared minimum versions")
        return 1
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *TESTS],
                       cwd=ROOT, env=env)
    return r.returncode


if __name__ == "__main__":
    raise SystemExit(main())

"""Write the teaching notebooks (clean nbformat v4 JSON, no outputs, stable cell ids).

    .venv/bin/python notebooks/_build_notebooks.py          # rewrites notebooks/0*.ipynb

The notebooks are generated from this file so that they stay reviewable as code and are always
committed without outputs; edit the cells here and rerun it (tests/test_notebooks.py checks that the
committed notebooks match). Each notebook's content lives in its own module ``_nb0X.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat import v4

HERE = Path(__file__).resolve().parent


# ---- cell helpers ------------------------------------------------------------------------------

def md(text: str):
    """A Markdown cell (text is dedented and stripped)."""
    return v4.new_markdown_cell(dedent(text).strip("\n"))


def code(text: str, **metadata):
    """A code cell with no outputs and no execution count."""
    cell = v4.new_code_cell(dedent(text).strip("\n"))
    cell.metadata.update(metadata)
    return cell


def exercise(text: str):
    """An empty cell for the student's own attempt."""
    return code(f"# {text}: your code here\n")


def solution_code(text: str):
    """A runnable solution whose source and output are collapsed until the student opens them."""
    return code(text, tags=["solution"], jupyter={"source_hidden": True, "outputs_hidden": True})


def solution_md(text: str):
    """A written solution, folded into an HTML <details> block (closed by default)."""
    body = dedent(text).strip("\n")
    return v4.new_markdown_cell(f"<details><summary><b>Solution</b> (click to open)</summary>\n\n{body}\n\n</details>")


# ---- the shared first cell ---------------------------------------------------------------------

SETUP_HEAD = '''\
# Setup: imports, the fast mode, and which data and models this notebook uses.
import math
import os
import sys
import time
from pathlib import Path

# the engine is the installed package (pip install -r requirements.txt installs it, editable)

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
import torch
from IPython.display import Image, Markdown, display

from uat_core import experiments, export, plots, zoo
from uat_core.data import load_dataset, resolve_data_root
from uat_core.evaluation import evaluate, predict
{imports}
FAST = os.environ.get("UAT_FAST") == "1"    # UAT_FAST=1: the quick CI run (digits, tiny sets, few epochs)
if FAST:                                    # as the test suite: one intra-op thread (UAT_TEST_THREADS overrides)
    torch.set_num_threads(int(os.environ.get("UAT_TEST_THREADS", "1")))
torch.manual_seed(0)

# CIFAR-10 when its images ($UAT_DATA) and the zoo models this notebook needs are both here, else
# scikit-learn's 8x8 digits upsampled to 32x32 (bundled, offline, instant). PREFER = "digits" forces those.
PREFER = "auto"
NEEDS = {needs!r}  # the zoo models (by training algorithm) used below
DATA_ROOT = resolve_data_root(None)                                   # $UAT_DATA, if set
if DATA_ROOT and not Path(DATA_ROOT).expanduser().is_dir() and (Path.cwd().parent / DATA_ROOT).is_dir():
    DATA_ROOT = str(Path.cwd().parent / DATA_ROOT)                    # given relative to the project root
HAVE_CIFAR = bool(DATA_ROOT) and Path(DATA_ROOT).expanduser().is_dir()
CIFAR_ZOO = {{m["algorithm"]: m["name"] for m in zoo.list_models("cifar10")}}
MISSING = [a for a in NEEDS if a not in CIFAR_ZOO]
USE_CIFAR = PREFER == "auto" and not FAST and HAVE_CIFAR and not MISSING
DATASET = "cifar10" if USE_CIFAR else "digits"
EPS = 8 if USE_CIFAR else 32               # ε in 0-255 pixel units: the paper's 8 on CIFAR-10; digits need more
ZOO = {{m["algorithm"]: m["name"] for m in zoo.list_models(DATASET)}}    # training algorithm -> zoo model name
MANIFEST = {{m["name"]: m for m in zoo.list_models()}}                    # zoo name -> its manifest entry

# How much work each cell does: FAST for CI, then the full sizes students run.
{sizes}
train = load_dataset(DATASET, "train", root=DATA_ROOT, limit=TRAIN_SIZE, progress=False)
test = load_dataset(DATASET, "test", root=DATA_ROOT, limit=TEST_SIZE, progress=False)

if USE_CIFAR:
    reason = "its images ($UAT_DATA) and its zoo models are both available"
elif FAST:
    reason = "fast mode (UAT_FAST=1) always uses digits"
elif PREFER != "auto":
    reason = f"PREFER = {{PREFER!r}}"
elif DATA_ROOT is None:
    reason = "CIFAR-10 was not found; start JupyterLab with UAT_DATA=<CIFAR-10 folder> to use it"
elif not HAVE_CIFAR:
    reason = f"UAT_DATA={{DATA_ROOT}} is not a folder"
else:
    reason = f"the zoo has no CIFAR-10 {{'/'.join(MISSING)}} model yet (assets/models/manifest.json)"
display(Markdown(f"**Dataset: {{DATASET}}** ({{reason}}).  \\n{{train.source}}: {{len(train)}} training and "
                 f"{{len(test)}} test images used here, ε = {{EPS}}/255."
                 + ("  \\n**Fast mode**: tiny sets and few epochs, so the numbers below are rough." if FAST else "")))
'''


def setup_cell(sizes: str, imports: str = "", needs: tuple = ("natural",)) -> object:
    """The first code cell of every notebook: the shared head plus this notebook's sizes and imports.

    ``needs``: the zoo models (by training algorithm) without which the notebook falls back to digits.
    """
    return code(SETUP_HEAD.format(sizes=dedent(sizes).strip("\n"), imports=dedent(imports).strip("\n") + "\n",
                                  needs=list(needs)))


# ---- writing -----------------------------------------------------------------------------------

def notebook(cells: list, prefix: str) -> nbformat.NotebookNode:
    nb = v4.new_notebook()
    nb.cells = cells
    for i, cell in enumerate(nb.cells):
        cell.id = f"{prefix}-{i:02d}"                       # stable ids: regenerating gives the same file
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def build_all() -> dict[str, nbformat.NotebookNode]:
    """{file name: notebook} for every notebook."""
    sys.path.insert(0, str(HERE))
    import _nb01, _nb02, _nb03, _nb04, _nb05   # noqa: E401  (each defines NAME and cells())
    return {m.NAME: notebook(m.cells(), m.NAME[:2]) for m in (_nb01, _nb02, _nb03, _nb04, _nb05)}


def render(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def main() -> int:
    for name, nb in build_all().items():
        (HERE / name).write_text(render(nb), encoding="utf-8")
        print(f"wrote notebooks/{name} ({len(nb.cells)} cells)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Write the teaching notebooks (clean nbformat v4 JSON, no outputs, stable cell ids).

    .venv/bin/python notebooks/_build_notebooks.py          # rewrites notebooks/0*.ipynb

The notebooks are generated from this file so that they stay reviewable as code and are always
committed without outputs; edit the cells here and rerun it (tests/test_notebooks.py checks that the
committed notebooks match). Each notebook's content lives in its own module ``_nb0X.py``.
"""
from __future__ import annotations

import json
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
import time
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import plotly.graph_objects as go
import torch
from IPython.display import Image, Markdown, display

from uat_core.recipes import experiments
from uat_core.engine import export
from uat_core import notebook, plots, zoo
from uat_core.engine.evaluation import evaluate, predict
{imports}
# CIFAR-10 when its images ($UAT_DATA) and the zoo models below are both here, else scikit-learn's 8x8 digits
# upsampled to 32x32 (bundled, offline, instant); UAT_FAST=1 (the tests) always uses digits.
# notebook.choose(..., prefer="digits") forces digits.
NB = notebook.choose(needs={needs})
FAST, USE_CIFAR, DATASET, EPS, ZOO, MANIFEST = NB.fast, NB.use_cifar, NB.dataset, NB.eps, NB.zoo, NB.manifest

# How much work each cell does: FAST for CI, then the full sizes students run.
{sizes}
train, test = NB.load(TRAIN_SIZE, TEST_SIZE)
display(Markdown(NB.summary(train, test)))
'''


def setup_cell(sizes: str, imports: str = "", needs: tuple = ("natural",)) -> object:
    """The first code cell of every notebook: the shared head plus this notebook's sizes and imports.

    ``needs``: the zoo models (by training algorithm) without which the notebook falls back to digits.
    """
    return code(SETUP_HEAD.format(sizes=dedent(sizes).strip("\n"), imports=dedent(imports).strip("\n") + "\n",
                                  needs=json.dumps(list(needs))))


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

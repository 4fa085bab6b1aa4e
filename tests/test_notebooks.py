"""The teaching notebooks are committed clean: valid nbformat v4, no outputs, no execution counts,
generated from notebooks/_build_notebooks.py, and switchable to the fast CI mode with UAT_FAST=1.

Executing them is a separate CI step: ``UAT_FAST=1 pytest --nbmake notebooks/``.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ["01_universal_perturbations.ipynb", "02_clipped_loss_and_data.ipynb",
            "03_universal_adversarial_training.ipynb", "04_low_cost_training.ipynb", "05_ideepfool_vs_sgd.ipynb"]
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_five_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_valid_v4_without_outputs(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)                                     # raises on an invalid notebook
    for cell in _code_cells(nb):
        assert cell.outputs == [], f"{path.name}: cell {cell.id} has outputs (strip them)"
        assert cell.execution_count is None, f"{path.name}: cell {cell.id} has an execution count"
        assert "execution" not in cell.metadata, f"{path.name}: cell {cell.id} has execution timings"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in the metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_honours_uat_fast(path):
    nb = nbformat.read(path, as_version=4)
    first = _code_cells(nb)[0].source
    assert re.search(r"^NB = notebook\.choose\(needs=\[", first, re.M), "the setup is the library call"
    assert "FAST, USE_CIFAR, DATASET, EPS, ZOO, MANIFEST = NB.fast," in first
    assert re.search(r"^if FAST:", first, re.M), "the sizes must depend on FAST"
    assert len(first.splitlines()) < 40, "the setup cell stays short: the logic lives in uat_core.notebook"
    assert "sys.path.insert" not in first, "the engine is the installed package (requirements.txt: -e .)"
    assert "from uat_core" in first or "import uat_core" in first


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_teaching_ingredients(path):
    """Equations, live plotly widgets, non-blocking controls and hidden solutions in every notebook."""
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    code = "\n".join(c.source for c in _code_cells(nb))
    assert "$$" in text, "no displayed equation"
    assert "go.FigureWidget(plots." in code, "no live figure from a uat_core.plots builder"
    sliders = len(re.findall(r"Slider\(", code))
    assert sliders and code.count("continuous_update=False") >= sliders, "every slider needs continuous_update=False"
    assert "input(" not in code, "nothing may wait for user input"
    hidden = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    assert all(c.metadata["jupyter"]["source_hidden"] for c in hidden)
    folded = [c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("<details>")]
    assert len(hidden) + len(folded) >= 2, "exercises need solutions hidden by default"
    machine = str(Path(__file__).resolve().parents[2])          # the folder this checkout lives in
    assert machine + "/" not in text and str(Path.home()) + "/" not in text, "no absolute paths of this machine"


def test_notebooks_match_their_builder():
    sys.path.insert(0, str(NB_DIR))
    try:
        import _build_notebooks as builder
        built = builder.build_all()
    finally:
        sys.path.remove(str(NB_DIR))
    assert sorted(built) == EXPECTED
    for name, nb in built.items():
        assert (NB_DIR / name).read_text(encoding="utf-8") == builder.render(nb), (
            f"{name} differs from notebooks/_build_notebooks.py: edit the builder and run it")


# ---- the small engine helpers the notebooks rely on ----------------------------------------------

def test_refresh_updates_in_place_and_replaces_when_traces_change():
    from uat_core import plots
    hist = [{"step": i, "loss": 1.0 + i, "acc": 1 / (i + 1)} for i in range(1, 6)]
    target = go.Figure(plots.attack_curve([]))                # one trace: no loss yet
    plots.refresh(target, plots.attack_curve(hist[:2]))       # two traces now: replaced
    assert len(target.data) == 2 and list(target.data[1].y) == [2.0, 3.0]
    first = target.data[0]
    plots.refresh(target, plots.attack_curve(hist, title="done"))
    assert target.data[0] is first                            # same trace object, new data
    assert list(target.data[1].y) == [h["loss"] for h in hist]
    assert list(target.data[0].y) == pytest.approx([100 * h["acc"] for h in hist])
    assert target.layout.title.text == "done"


def test_datasize_sweep_can_hold_the_number_of_steps_fixed():
    from uat_core.recipes import experiments
    from uat_core import zoo
    from uat_core.engine.data import load_dataset
    model, _ = zoo.load_zoo_model("digits_smallcnn_natural")
    train = load_dataset("digits", "train", limit=96, progress=False)
    test = load_dataset("digits", "test", limit=20, progress=False)
    rows = list(experiments.datasize_sweep(model, train, test, sizes=(16, 96), repeats=1, steps=3,
                                           eps=32, batch_size=32))
    # 16 images: 1 minibatch per epoch -> 3 epochs; 96 images: 3 minibatches -> 1 epoch.
    assert [(r["size"], r["steps"]) for r in rows] == [(16, 3), (96, 3)]
    fixed = list(experiments.datasize_sweep(model, train, test, sizes=(16, 96), repeats=1, eps=32,
                                            batch_size=32, epochs=1))
    assert [r["steps"] for r in fixed] == [1, math.ceil(96 / 32)]


def test_the_setup_call_picks_digits_in_fast_mode_and_says_why_otherwise(monkeypatch, tmp_path):
    import torch

    from uat_core import notebook
    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("UAT_FAST", "1")
        monkeypatch.setenv("UAT_DATA", str(tmp_path))
        nb = notebook.choose(needs=["natural"])
        assert (nb.dataset, nb.eps, nb.fast, torch.get_num_threads()) == ("digits", 32, True, 1)
        assert "fast mode" in nb.reason and nb.zoo["natural"].startswith("digits_")
        monkeypatch.delenv("UAT_FAST")
        monkeypatch.delenv("UAT_DATA")
        assert "CIFAR-10 was not found" in notebook.choose().reason
        monkeypatch.setenv("UAT_DATA", str(tmp_path / "nowhere"))
        assert "is not a folder" in notebook.choose().reason
        monkeypatch.setenv("UAT_DATA", str(tmp_path))
        nb = notebook.choose(needs=["natural", "no_such_algorithm"])
        assert nb.dataset == "digits" and "no CIFAR-10 no_such_algorithm model" in nb.reason
        assert notebook.choose(prefer="digits").dataset == "digits"
        train, test = nb.load(20, 10)
        assert (len(train), len(test)) == (20, 10) and "**Dataset: digits**" in nb.summary(train, test)
    finally:
        torch.set_num_threads(threads)

"""The one experiment layer (uat_core.recipes.experiments): the notebooks' helpers and the app's page jobs drive the
same generators, so the same settings give the same numbers in both."""
from __future__ import annotations

import math

import pytest

from uat_core.recipes import experiments as X
from uat_core import zoo
from uat_core.engine.data import load_dataset
from webapp.pages_spec import defaults, page_job


@pytest.fixture(scope="module")
def digits():
    model, _ = zoo.load_zoo_model("digits_smallcnn_natural")
    return model, load_dataset("digits", "train", progress=False), load_dataset("digits", "test", limit=100,
                                                                                  progress=False)


def test_the_notebook_sweep_and_the_page_job_run_the_same_attacks(digits):
    model, train, test = digits
    s = {**defaults("size", "digits"), "sizes": [50, 300], "repeats": 1, "steps": 5, "test_size": 100}
    page = page_job("size", s, train, test, model=model).finish()["rows"]
    nb = list(X.datasize_sweep(model, train, test, sizes=s["sizes"], repeats=1, steps=5, eps=s["eps"]))
    assert [(r["size"], r["steps"]) for r in page] == [(r["size"], r["steps"]) for r in nb]
    assert [r["perturbed_top1"] for r in page] == [r["perturbed_top1"] for r in nb]
    # 300 images in minibatches of 128: 3 per epoch, 5 steps -> 2 epochs (to the nearest) = 6 steps
    assert [r["steps"] for r in nb] == [5, 6]


def test_the_beta_sweep_helper_is_the_page_sweep(digits):
    model, train, test = digits
    s = {**defaults("beta", "digits"), "betas": [2.0, math.inf], "repeats": 1, "attack_size": 100, "epochs": 2,
         "test_size": 100}
    page = page_job("beta", s, train, test, model=model).finish()["rows"]
    nb = list(X.beta_sweep(model, train, test, betas=s["betas"], repeats=1, attack_size=100, eps=s["eps"], epochs=2))
    assert [r["beta"] for r in nb] == [2.0, math.inf]
    assert [r["perturbed_top1"] for r in page] == [r["perturbed_top1"] for r in nb]


def test_run_calls_back_every_step_and_a_stop_still_returns_the_partial_result(digits):
    model, train, test = digits
    seen = []

    def cb(p):
        seen.append(p.state.get("step"))
        if len(seen) == 3:
            p.stop()

    cfg = {"eps": 32, "epochs": 5, "batch_size": 32, "snapshot_every": 0}
    out = X.run(X.attack, model, train.subset(200, seed=0), test, cfg, callback=cb)
    assert out["stopped"] and out["steps"] == 3 and 0 <= out["metrics"]["perturbed_top1"] <= 1
    assert out["fixed"]["name"] and len(seen) >= 3
    full = X.attack_and_eval(model, train.subset(200, seed=0), test, eps=32, epochs=1, batch_size=32)
    assert full["steps"] == math.ceil(200 / 32) and not full["stopped"] and "perturbed_top1" in full


def test_the_home_pictures_count_what_the_model_gets_right(digits):
    import torch

    model, _, test = digits
    delta = zoo.load_zoo_perturbation("digits_smallcnn_natural")
    d_png, grid_png, cnt = X.hero_pictures(model, delta, test, 32, n=8)
    assert d_png[:8] == grid_png[:8] == b"\x89PNG\r\n\x1a\n"
    idx = X.preview_indices(test, 8)
    with torch.no_grad():
        clean = (model(test.float_images(idx)).argmax(1) == test.labels[idx]).sum().item()
        pert = (model((test.float_images(idx) + delta).clamp(0, 1)).argmax(1) == test.labels[idx]).sum().item()
    assert cnt == {"clean": clean, "pert": pert, "n": 8}


def test_ctrl_c_during_run_stops_after_the_step_and_returns_the_partial_result(digits):
    import os
    import signal

    model, train, test = digits
    seen = []

    def cb(p):
        seen.append(1)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGINT)          # what a notebook's interrupt button sends

    before = signal.getsignal(signal.SIGINT)
    out = X.run(X.attack, model, train.subset(200, seed=0), test, {"eps": 32, "epochs": 5, "batch_size": 32,
                                                                    "snapshot_every": 0}, callback=cb)
    assert out["stopped"] and out["steps"] < 5 * math.ceil(200 / 32) and "perturbed_top1" in out["metrics"]
    assert signal.getsignal(signal.SIGINT) is before     # the handler is put back

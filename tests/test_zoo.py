"""The shipped zoo: manifest matches the files, models load safely and reproduce their recorded figures."""
import json
import os

import pytest
import torch

from uat_core import zoo
from uat_core.engine.errors import UATError
from uat_core.engine.data import load_dataset
from uat_core.engine.evaluation import evaluate

ENTRIES = zoo.list_models(group=None)      # the zoo and the vulnerability study's models


def _available(dataset: str) -> bool:
    return dataset == "digits" or bool(os.environ.get("UAT_DATA"))


def test_manifest_lists_models_for_both_datasets():
    datasets = {e["dataset"] for e in ENTRIES}
    assert "digits" in datasets
    for e in ENTRIES:
        for key in ("file", "sha256", "arch", "dataset", "algorithm", "eps", "epochs", "clean_top1",
                    "train_seconds", "command", "perturbation"):
            assert key in e, (e["name"], key)
        assert e["command"].startswith("python -m uat_core train")


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_files_match_manifest_sha256_and_are_small(entry):
    path = zoo.ZOO_DIR / entry["file"]
    assert path.is_file()
    assert zoo.sha256(path) == entry["sha256"]
    assert path.stat().st_size < 5 * 2**20
    if "perturbation_sha256" in entry:
        assert zoo.sha256(zoo.ZOO_DIR / entry["perturbation"]) == entry["perturbation_sha256"]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_model_and_perturbation_reproduce_recorded_accuracy(entry):
    if not _available(entry["dataset"]):
        pytest.skip("CIFAR-10 not available (set UAT_DATA)")
    if "slice_clean_top1" not in entry:
        pytest.skip("manifest entry predates slice figures: run python -m uat_core.zoo refresh")
    # weights_only loading is inside load_checkpoint; a pickle payload would be refused
    model, meta = zoo.load_zoo_model(entry["name"])
    assert meta["arch"] == entry["arch"] and meta["dataset"] == entry["dataset"]
    delta = zoo.load_zoo_perturbation(entry["name"])
    assert delta.abs().max() <= entry["eps"] / 255 + 1e-6
    test = load_dataset(entry["dataset"], "test", limit=zoo.SLICE, seed=0, progress=False)
    m = evaluate(model, test.images, test.labels, delta, test.num_classes)
    assert abs(m["clean_top1"] - entry["slice_clean_top1"]) <= 0.01
    assert abs(m["perturbed_top1"] - entry["slice_perturbed_top1"]) <= 0.01


def test_shipped_perturbations_come_from_the_strong_attack_with_the_baseline_beside_them():
    for e in ENTRIES:
        a = e["perturbation_attack"]
        assert a["attack"] == "strong" and a["start"], e["name"]
        assert e["robust_attack"] == "strong" and e["robust_top1"] == e["perturbed_top1"]
        assert e["fixed_pattern"] and 0 <= e["fixed_top1"] <= 1
        # the strong δ must not lose to the best fixed pattern by more than noise on the test split
        assert e["perturbed_top1"] <= e["fixed_top1"] + 0.02, e["name"]


def test_tampered_model_is_refused(tmp_path, monkeypatch):
    entry = next(e for e in ENTRIES if e["dataset"] == "digits")
    data = (zoo.ZOO_DIR / entry["file"]).read_bytes()
    (tmp_path / entry["file"]).write_bytes(data[:-10] + b"0123456789")
    monkeypatch.setattr(zoo.store, "ZOO_DIR", tmp_path)      # where load_zoo_model looks
    with pytest.raises(UATError, match="sha256"):
        zoo.load_zoo_model(entry["name"])
    with pytest.raises(UATError, match="no zoo model"):
        zoo.load_zoo_model("no_such_model")


def test_natural_digits_model_is_fooled_by_its_shipped_perturbation():
    """The default view of the app relies on this: the shipped δ really is a strong universal perturbation."""
    e = {x["name"]: x for x in ENTRIES}["digits_smallcnn_natural"]
    assert e["clean_top1"] > 0.95
    assert e["perturbed_top1"] < 0.3
    robust = {x["algorithm"]: x for x in ENTRIES if x["dataset"] == "digits"}
    assert robust["uat"]["robust_top1"] > e["robust_top1"] + 0.3
    assert torch.is_tensor(zoo.load_zoo_perturbation("digits_smallcnn_natural"))


def test_cifar10_recipe_follows_the_device():
    """A CPU build gets the short CPU recipes, a CUDA build the 40-epoch GPU ones; digits has one recipe."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for algo in zoo.RECIPES["cifar10"]["models"]:
        c, g = zoo.recipe("cifar10", algo, cpu), zoo.recipe("cifar10", algo, gpu)
        assert c["algorithm"] == g["algorithm"]                  # the same training algorithm
        assert c["epochs"] <= 10 and c["epochs"] < g["epochs"]
    assert zoo.recipe("digits", "uat", cpu) == zoo.recipe("digits", "uat", gpu)


def test_the_zoo_trains_in_process_through_run_training(tmp_path, monkeypatch):
    """No subprocess, no metrics.json read back: the metrics come from uat_core.recipes.runs.run_training, which
    `uat train` runs too; the command recorded in the model's metadata names no absolute path."""
    import subprocess

    from uat_core import zoo
    from uat_core.engine.checkpoint import read_checkpoint

    def no_subprocess(*a, **kw):
        raise AssertionError("the zoo must not start a subprocess to train")
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    monkeypatch.setattr(zoo.builder, "RUNS", tmp_path / "runs")
    monkeypatch.setitem(zoo.RECIPES["digits"]["models"], "natural",
                        dict(epochs=1, train_size=64, eval_size=32, report=False))
    out, metrics = zoo.builder.train_model("digits", "natural", None, torch.device("cpu"))
    assert out == tmp_path / "runs" / "digits_smallcnn_natural"
    assert metrics["epochs"] == 1 and metrics["train_size"] == 64 and metrics["eval_size"] == 32
    assert json.loads((out / "metrics.json").read_text())["clean_top1"] == metrics["clean_top1"]
    command = read_checkpoint(out / "model.pt")["meta"]["training"]["command"]
    assert command.startswith("python -m uat_core train --dataset digits") and str(zoo.ROOT) not in command
    again, m2 = zoo.builder.train_model("digits", "natural", None, torch.device("cpu"))   # finished: not trained again
    assert again == out and m2["clean_top1"] == metrics["clean_top1"]

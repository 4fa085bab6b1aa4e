"""The CUDA paths, checked against the same computation on the CPU (skipped where no GPU is visible).

CI has no GPU, so these run only on a machine with one: ``python -m pytest tests/test_cuda.py`` (where the
dev requirements, nbmake among them, are not installed: ``python -m pytest -o addopts= tests/test_cuda.py``).
Each test runs one computation on both devices
from the same seed and compares: GPU float reductions differ from the CPU's in the last bits, so the
comparisons are on outcomes (predictions, losses, signs), with tolerances that a wrong device move, a
missing ``.cpu()`` or a dropped augmentation would break by far.
"""
from __future__ import annotations

import copy

import pytest
import torch

from uat_core.engine.attacks import AttackConfig, UniversalAttack
from uat_core.engine.checkpoint import load_checkpoint, save_checkpoint
from uat_core.engine.constraints import norm_of
from uat_core.engine.evaluation import evaluate, predict
from uat_core.recipes.pipeline import make_trainer, meta_for
from uat_core.engine.training import TrainConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")

EPS = 32.0                                  # digits ε, 0-255 units


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=64, lr=0.05, augment=False, flip=False, eps=EPS, track_every=0,
                snapshot_every=0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_evaluate_on_cuda_matches_cpu(digits_model, digits_test):
    gpu = copy.deepcopy(digits_model).cuda()
    delta = (torch.rand(digits_test.shape, generator=torch.Generator().manual_seed(0)) - 0.5) * (2 * EPS / 255)
    cpu_m = evaluate(digits_model, digits_test.images, digits_test.labels, delta)
    gpu_m = evaluate(gpu, digits_test.images, digits_test.labels, delta)
    assert abs(cpu_m["clean_top1"] - gpu_m["clean_top1"]) <= 0.004          # at most 2 of 500 images
    assert abs(cpu_m["perturbed_top1"] - gpu_m["perturbed_top1"]) <= 0.004
    top_c, _ = predict(digits_model, digits_test.images, delta, topk=1)
    top_g, _ = predict(gpu, digits_test.images, delta, topk=1)
    assert top_g.device.type == "cpu"                                      # results come back to the CPU
    assert (top_c == top_g).float().mean() >= 0.99


def test_alg2_on_cuda_matches_cpu(digits_model, digits_train, digits_test):
    sub = digits_train.subset(256, seed=0)
    x, y = sub.float_images(), sub.labels
    cfg = AttackConfig(eps=EPS, beta=9.0, optimizer="pgd", epochs=3, batch_size=64, seed=0, snapshot_every=0)
    res_c = UniversalAttack(digits_model, x, y, cfg).run()
    res_g = UniversalAttack(copy.deepcopy(digits_model).cuda(), x, y, cfg).run()
    assert res_g.delta.device.type == "cpu"
    assert float(norm_of(res_g.delta, "linf")) <= EPS / 255 + 1e-6
    same_sign = (res_c.delta.sign() == res_g.delta.sign()).float().mean()
    assert same_sign >= 0.9, f"only {same_sign:.2f} of δ's signs agree between CPU and GPU"
    acc_c = evaluate(digits_model, digits_test.images, digits_test.labels, res_c.delta)["perturbed_top1"]
    acc_g = evaluate(digits_model, digits_test.images, digits_test.labels, res_g.delta)["perturbed_top1"]
    assert abs(acc_c - acc_g) <= 0.05
    assert acc_g < 0.5                          # and the GPU δ is a real attack (clean is 99%)


@pytest.mark.parametrize("algo", ["natural", "uat", "lowcost", "fgsm", "pgd"])
def test_training_step_on_cuda_matches_cpu(algo, digits_train):
    """One epoch from the same init on both devices: same first-step loss, same passes, finite weights."""
    sub = digits_train.subset(320, seed=0)
    extra = {"pgd_steps": 2} if algo == "pgd" else {}
    res_c = make_trainer("smallcnn", sub, _cfg(algorithm=algo, **extra), device="cpu").run()
    res_g = make_trainer("smallcnn", sub, _cfg(algorithm=algo, **extra), device="cuda").run()
    assert res_g.passes == res_c.passes
    assert res_g.history[0]["loss"] == pytest.approx(res_c.history[0]["loss"], rel=1e-3)
    assert res_g.history[-1]["loss"] == pytest.approx(res_c.history[-1]["loss"], rel=0.1, abs=0.05)
    assert all(torch.isfinite(p).all() for p in res_g.model.parameters())
    if res_g.delta is not None:
        assert res_g.delta.device.type == "cpu"
        assert float(norm_of(res_g.delta, "linf")) <= EPS / 255 + 1e-6
        assert (res_g.delta.sign() == res_c.delta.sign()).float().mean() >= 0.8


def test_amp_channels_last_resnet_trains(digits_train):
    """bfloat16 autocast + channels-last on a ResNet-20 (the CIFAR model): the loss falls and stays finite."""
    sub = digits_train.subset(640, seed=0)
    res = make_trainer("resnet20", sub, _cfg(algorithm="uat", epochs=3, lr=0.1, amp=True, channels_last=True),
                       device="cuda").run()
    losses = [h["loss"] for h in res.history]
    assert all(map(lambda v: v == v, losses))                        # no NaN
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first, f"loss did not fall under AMP: {first:.3f} -> {last:.3f}"


def test_checkpoint_written_from_cuda_loads_on_cpu(tmp_path, digits_model, digits_test):
    gpu = copy.deepcopy(digits_model).cuda()
    meta = meta_for("smallcnn", digits_test)
    path = save_checkpoint(tmp_path / "m.pt", gpu, meta)
    obj = torch.load(path, weights_only=True)                          # no map_location: CPU tensors only
    assert all(t.device.type == "cpu" for t in obj["state_dict"].values())
    model, _ = load_checkpoint(path)
    a, _ = predict(model, digits_test.images, None, topk=1)
    b, _ = predict(digits_model, digits_test.images, None, topk=1)
    assert torch.equal(a, b)

"""The paper's Alg. 3 and Alg. 4, step for step, against plain reference computations written here (micrograd's
habit: the engine's code path is checked against the simplest code that says the same thing).

The Trainer runs both algorithms on its adversary's pool of δs (training/adversary.py); with one δ and no bank
share (m = 1, the paper's setting) that pool must reproduce the textbook loop below exactly: same weights, same δ.
The ℓ2 ball (``--norm l2``) follows the same loop with the ℓ2 steepest-ascent step and projection.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from uat_core.engine.training import TrainConfig, Trainer
from uat_core.recipes.pipeline import new_model

STEPS, BATCH = 4, 64


@contextlib.contextmanager
def input_gradient_only(model):
    """The ascent pass: BatchNorm in training mode, its running statistics untouched, no weight gradients."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, mo in zip(bns, saved):
            m.momentum = mo
        for p in model.parameters():
            p.requires_grad_(True)


def ascent(g, norm):
    return g.sign() if norm == "linf" else g / g.norm().clamp_min(1e-12)


def project(d, eps, norm):
    if norm == "linf":
        return d.clamp(-eps, eps)
    n = d.norm()
    return d * (eps / n) if n > eps else d


def reference(algorithm, data, batches, eps255, norm="linf", lr=0.05):
    """The paper's loop in plain torch. batches: [(x, y)]; returns (model, δ)."""
    model = new_model("smallcnn", data, seed=0).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    eps = eps255 / 255
    delta = torch.zeros(data.shape)
    for x, y in batches:
        if algorithm == "uat":                                 # Alg. 3: weights with δ_t, then δ with θ_{t+1}
            opt.zero_grad()
            F.cross_entropy(model((x + delta).clamp(0, 1)), y).backward()
            opt.step()
            d = delta.clone().requires_grad_(True)
            with input_gradient_only(model):
                g, = torch.autograd.grad(F.cross_entropy(model((x + d).clamp(0, 1)), y), d)
        else:                                                  # Alg. 4: one backward gives both gradients
            d = delta.clone().requires_grad_(True)
            opt.zero_grad()
            F.cross_entropy(model((x + d).clamp(0, 1)), y).backward()
            g = d.grad
            opt.step()
        delta = project(delta + eps * ascent(g, norm), eps, norm)
    return model, delta


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("algorithm", ["uat", "lowcost"])
def test_the_pool_of_one_delta_is_the_papers_algorithm(digits_train, algorithm, norm):
    data = digits_train.subset(STEPS * BATCH, seed=0)
    eps = 32 if norm == "linf" else 255
    cfg = TrainConfig(algorithm=algorithm, epochs=1, batch_size=BATCH, lr=0.05, schedule="constant", augment=False,
                      eps=eps, norm=norm, delta_pool=1, track_every=0, snapshot_every=0, seed=0)
    tr = Trainer(new_model("smallcnn", data, seed=0), data, cfg)
    order = tr._order(0)
    batches = [tr._batch(order, 0, i)[:2] for i in range(tr.steps_per_epoch)]
    res = tr.run()
    ref_model, ref_delta = reference(algorithm, data, batches, eps, norm)
    assert res.steps == STEPS
    assert torch.allclose(res.delta, ref_delta, atol=1e-6), (res.delta - ref_delta).abs().max()
    for p, q in zip(res.model.parameters(), ref_model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert res.delta.abs().max() > 0                                       # δ did move
    if norm == "l2":
        assert float(res.delta.norm()) == pytest.approx(eps / 255, rel=1e-5)    # on the sphere after a step


def test_the_reference_tells_the_algorithms_apart(digits_train):
    """The check above can fail: Alg. 3 and Alg. 4 differ (δ's gradient at θ_{t+1} versus θ_t)."""
    data = digits_train.subset(STEPS * BATCH, seed=0)
    cfg = TrainConfig(algorithm="uat", epochs=1, batch_size=BATCH, lr=0.05, schedule="constant", augment=False,
                      eps=32, track_every=0, snapshot_every=0)
    tr = Trainer(new_model("smallcnn", data, seed=0), data, cfg)
    order = tr._order(0)
    batches = [tr._batch(order, 0, i)[:2] for i in range(tr.steps_per_epoch)]
    res = tr.run()
    _, other = reference("lowcost", data, batches, 32)
    assert not torch.allclose(res.delta, other, atol=1e-6)


def test_per_instance_attacks_refuse_the_l2_ball():
    with pytest.raises(Exception, match="universal"):
        TrainConfig(algorithm="pgd", norm="l2").validate()

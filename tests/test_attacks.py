"""Alg. 2 (universal SGD attack), DeepFool and iDeepFool (Alg. 1).

Exact checks run on a tiny linear classifier against hand-written reference steps; the "does it attack"
checks run on the shipped digits SmallCNN (99% clean) with small attack sets so they take seconds.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from uat_core.engine.attacks import (DEFAULT_STEP, OPTIMIZERS, AttackConfig, IDeepFool, IDFConfig, UniversalAttack,
                              deepfool, ideepfool, universal_attack)
from uat_core.engine.errors import UATError
from uat_core.engine.evaluation import evaluate

EPS = 32.0          # digits: the README's ε (0-255 units)


class Linear(nn.Module):
    """logits = W·flatten(x) + b: small, deterministic, with gradients that are easy to write by hand."""

    def __init__(self, shape=(1, 4, 4), classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = math.prod(shape)
        self.fc = nn.Linear(d, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, d, generator=g))
            self.fc.bias.copy_(torch.randn(classes, generator=g))

    def forward(self, x):                    # (N,C,H,W) -> (N,K)
        return self.fc(x.flatten(1))


class NaNModel(nn.Module):
    """A broken classifier: its logits are NaN (as after a diverged training run)."""

    def __init__(self, classes=3):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return (x.flatten(1)[:, :3] * self.w) * float("nan")


def toy_data(n=12, shape=(1, 4, 4), classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g) * 0.8 + 0.1          # away from 0/1: no clamping at first
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def ref_mean_grad(model, x, y, delta, beta=math.inf):
    """E_i ∇_δ min(CE(f(x_i + δ), y_i), β), one image at a time (no batching, no broadcasting)."""
    total = torch.zeros_like(delta)
    for xi, yi in zip(x, y):
        d = delta.clone().requires_grad_(True)
        ce = F.cross_entropy(model((xi + d).clamp(0, 1)[None]), yi[None])
        if ce.item() < beta:
            g, = torch.autograd.grad(ce, d)
            total += g
    return total / len(x)


# ---------------------------------------------------------------------------------------------
# exact behaviour on a linear model
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer,norm", [("pgd", "linf"), ("pgd", "l2"), ("sgd", "linf"), ("msgd", "linf")])
def test_first_step_is_the_shared_ascent_step(optimizer, norm):
    """δ is one (C,H,W) tensor moved along the *mean* gradient over the batch, then projected."""
    model = Linear()
    x, y = toy_data()
    eps, tau = 20.0, 3.0                                   # 0-255 units
    cfg = AttackConfig(eps=eps, beta=math.inf, optimizer=optimizer, norm=norm, step_size=tau, epochs=1,
                       batch_size=len(x), snapshot_every=0)
    res = universal_attack(model, x, y, cfg)
    assert res.delta.shape == x.shape[1:] and res.steps == 1
    g = ref_mean_grad(model, x, y, torch.zeros(x.shape[1:]))
    t = tau / 255
    if optimizer == "pgd" and norm == "linf":
        want = (t * g.sign()).clamp(-eps / 255, eps / 255)
    elif optimizer == "pgd":
        want = t * g / g.norm()
    else:                                                   # sgd and msgd (first step: no momentum yet)
        want = (t * g).clamp(-eps / 255, eps / 255)
    torch.testing.assert_close(res.delta, want, rtol=1e-5, atol=1e-7)
    # the step is an ascent: the loss at δ is above the loss at 0
    with torch.no_grad():
        assert F.cross_entropy(model((x + res.delta).clamp(0, 1)), y) > F.cross_entropy(model(x), y)


def test_clipping_drops_images_above_beta_from_the_step():
    model = Linear(seed=2)
    x, y = toy_data(n=16, seed=2)
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y, reduction="none")
    beta = float(ce.median())                               # about half the images are above β
    cfg = AttackConfig(eps=255, beta=beta, optimizer="sgd", step_size=1.0, epochs=1, batch_size=len(x))
    res = universal_attack(model, x, y, cfg)
    want = ref_mean_grad(model, x, y, torch.zeros(x.shape[1:]), beta) / 255
    torch.testing.assert_close(res.delta, want, rtol=1e-5, atol=1e-9)
    unclipped = ref_mean_grad(model, x, y, torch.zeros(x.shape[1:])) / 255
    assert not torch.allclose(want, unclipped)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_delta_stays_in_the_ball_and_history_is_complete(norm):
    model = Linear()
    x, y = toy_data(n=30)
    cfg = AttackConfig(eps=6, optimizer="adam", norm=norm, epochs=3, batch_size=8, snapshot_every=2,
                       step_size=5.0)
    run = UniversalAttack(model, x, y, cfg)
    events = list(run)
    steps_per_epoch = math.ceil(30 / 8)
    assert [e.kind for e in events].count("step") == 3 * steps_per_epoch == run.total
    assert [e.kind for e in events].count("epoch") == 3 and events[-1].kind == "done"
    res = run.result
    assert run.done and res.steps == 3 * steps_per_epoch and not res.stopped_early
    assert [h["step"] for h in res.history] == list(range(1, res.steps + 1))
    assert {"step", "epoch", "loss", "acc", "tau", "norm"} <= set(res.history[0])
    eps = 6 / 255
    bound = eps * (1 + 1e-5)
    for step, snap in res.snapshots:
        assert snap.shape == (1, 4, 4)
        assert (snap.abs().max() if norm == "linf" else snap.norm()) <= bound
    assert [s for s, _ in res.snapshots] == list(range(2, res.steps + 1, 2)) + \
        ([res.steps] if res.steps % 2 else [])
    assert max(h["norm"] for h in res.history) <= 6 * (1 + 1e-5)
    torch.testing.assert_close(res.snapshots[-1][1], res.delta)


def test_step_decay_and_default_step_size():
    cfg = AttackConfig(eps=10, optimizer="pgd")
    assert cfg.tau == pytest.approx(DEFAULT_STEP["pgd"] * 10)
    model = Linear()
    x, y = toy_data(n=8)
    res = universal_attack(model, x, y, AttackConfig(eps=10, step_size=4, step_decay=0.5, epochs=3, batch_size=4))
    taus = [h["tau"] for h in res.history]
    assert taus == pytest.approx([4, 4, 2, 2, 1, 1])


def test_same_seed_same_delta_and_different_seed_differs():
    model = Linear()
    x, y = toy_data(n=40)
    cfg = dict(eps=8, optimizer="sgd", step_size=30, epochs=2, batch_size=8)
    a = universal_attack(model, x, y, AttackConfig(**cfg, seed=1)).delta
    b = universal_attack(model, x, y, AttackConfig(**cfg, seed=1)).delta
    c = universal_attack(model, x, y, AttackConfig(**cfg, seed=2)).delta
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_uint8_images_are_read_as_pixels():
    model = Linear()
    x, y = toy_data()
    x8 = (x * 255).round().to(torch.uint8)
    cfg = AttackConfig(eps=8, epochs=1, batch_size=6)
    a = universal_attack(model, x8, y, cfg).delta
    b = universal_attack(model, x8.float() / 255, y, cfg).delta
    torch.testing.assert_close(a, b)


def test_stop_advance_and_weights_untouched():
    model = Linear()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    x, y = toy_data(n=40)
    run = UniversalAttack(model, x, y, AttackConfig(eps=8, epochs=5, batch_size=4))
    first = run.advance(3)
    assert [e.kind for e in first] == ["step"] * 3 and run.history[-1]["step"] == 3
    run.stop()
    rest = list(run)
    assert rest[-1].kind == "done" and run.result.stopped_early and run.result.steps == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.training and all(p.requires_grad for p in model.parameters())   # restored after frozen()


def test_delta_init_is_projected():
    model = Linear()
    x, y = toy_data()
    run = UniversalAttack(model, x, y, AttackConfig(eps=4), delta_init=torch.full((1, 4, 4), 1.0))
    assert float(run.delta.abs().max()) == pytest.approx(4 / 255)


@pytest.mark.parametrize("cfg,word", [
    (dict(eps=0), "eps"), (dict(eps=-3), "eps"), (dict(eps=256), "eps"), (dict(eps=float("nan")), "eps"),
    (dict(beta=0), "beta"), (dict(beta=-1), "beta"), (dict(optimizer="rmsprop"), "optimizer"),
    (dict(norm="l1"), "norm"), (dict(step_size=0), "step"), (dict(step_size=float("inf")), "step"),
    (dict(step_decay=1.5), "decay"), (dict(epochs=0), "epochs"), (dict(batch_size=0), "batch"),
])
def test_bad_attack_config_is_refused_before_any_work(cfg, word):
    with pytest.raises(UATError) as e:
        UniversalAttack(Linear(), *toy_data(), AttackConfig(**cfg))
    msg = str(e.value)
    assert "\n" not in msg and word in msg.lower()


@pytest.mark.parametrize("cfg", [dict(eps=0), dict(eps=300), dict(norm="l0"), dict(xi=0), dict(xi=1.5),
                                 dict(max_passes=0), dict(candidates=1)])
def test_bad_idf_config_is_refused(cfg):
    with pytest.raises(UATError) as e:
        IDeepFool(Linear(), *toy_data(), IDFConfig(**cfg))
    assert "\n" not in str(e.value)


def test_empty_attack_set_is_refused():
    for cls, cfg in ((UniversalAttack, AttackConfig()), (IDeepFool, IDFConfig())):
        with pytest.raises(UATError):
            cls(Linear(), torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.long), cfg)


@pytest.mark.parametrize("method", ["alg2", "idf"])
def test_nan_gradient_stops_the_run_with_a_message(method):
    model = NaNModel()
    x, y = toy_data()
    run = (UniversalAttack(model, x, y, AttackConfig(eps=8, epochs=2, batch_size=4)) if method == "alg2"
           else IDeepFool(model, x, y, IDFConfig(eps=8, max_passes=1, batch_size=4, candidates=3)))
    with pytest.raises(UATError) as e:
        run.run()
    assert "NaN" in str(e.value) and "\n" not in str(e.value)
    assert torch.isfinite(run.delta).all()                     # the live δ never holds NaN
    assert run.result is None


# ---------------------------------------------------------------------------------------------
# DeepFool
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_deepfool_batched_equals_one_image_at_a_time(digits_model, digits_test, norm):
    x = digits_test.float_images(torch.arange(4))                        # (4,1,32,32)
    r, fooled, backwards = deepfool(digits_model, x, norm, candidates=4, max_iter=20)
    assert r.shape == x.shape and backwards > 0
    for i in range(len(x)):
        ri, fi, _ = deepfool(digits_model, x[i:i + 1], norm, candidates=4, max_iter=20)
        torch.testing.assert_close(r[i:i + 1], ri, rtol=1e-3, atol=1e-5)
        assert bool(fi[0]) == bool(fooled[i])
    # what it reports as fooled really is fooled, with the returned perturbation
    with torch.no_grad():
        p0 = digits_model(x).argmax(1)
        p1 = digits_model((x + r).clamp(0, 1)).argmax(1)
    assert torch.equal(p1 != p0, fooled) and fooled.all()
    assert all(p.requires_grad for p in digits_model.parameters())


def test_deepfool_l2_step_is_the_exact_minimal_step_for_a_linear_model():
    """For an affine 2-class model DeepFool is exact: one step of length |f'|/‖w‖ (+overshoot) crosses."""
    model = Linear(classes=2, seed=3)
    x = torch.full((1, 1, 4, 4), 0.5)
    r, fooled, _ = deepfool(model, x, "l2", candidates=2, max_iter=5, overshoot=0.0)
    w = (model.fc.weight[1] - model.fc.weight[0]).detach()
    with torch.no_grad():
        f = model(x)[0]
    margin = abs(float(f[1] - f[0]))
    assert float(r.norm()) == pytest.approx(margin / float(w.norm()), rel=1e-2)
    assert bool(fooled[0])


# ---------------------------------------------------------------------------------------------
# against the trained digits model
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_digits_attack_drops_accuracy_from_above_95_to_below_30(digits_model, digits_train, digits_test,
                                                                digits_clean_top1):
    """The README's claim: ε = 32 takes the natural digits model from ≥95% to <30%, in seconds."""
    attack_set = digits_train.subset(512, seed=0)
    res = universal_attack(digits_model, attack_set.float_images(), attack_set.labels,
                           AttackConfig(eps=EPS, beta=9, epochs=4, batch_size=128))
    m = evaluate(digits_model, digits_test.images, digits_test.labels, res.delta)
    assert m["clean_top1"] == pytest.approx(digits_clean_top1) and m["clean_top1"] > 0.95
    assert m["perturbed_top1"] < 0.30
    assert float(res.delta.abs().max()) <= EPS / 255 * (1 + 1e-6)
    assert res.seconds < 120                       # "in seconds": a loose cap for a busy 2-core machine
    assert res.history[-1]["loss"] > res.history[0]["loss"]       # ascent on the clipped loss


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_lowers_accuracy(optimizer, digits_model, digits_train, digits_test):
    attack_set = digits_train.subset(256, seed=1)
    test = digits_test.subset(200, seed=0)
    res = universal_attack(digits_model, attack_set.float_images(), attack_set.labels,
                           AttackConfig(eps=EPS, optimizer=optimizer, epochs=3, batch_size=64))
    m = evaluate(digits_model, test.images, test.labels, res.delta)
    assert m["clean_top1"] > 0.95
    assert m["perturbed_top1"] < m["clean_top1"] - 0.4, (optimizer, m["perturbed_top1"])
    assert res.seconds < 60


@pytest.mark.slow
def test_targeted_attack_raises_the_target_rate(digits_model, digits_train, digits_test):
    target = 3
    attack_set = digits_train.subset(256, seed=2)
    test = digits_test.subset(200, seed=0)
    res = universal_attack(digits_model, attack_set.float_images(), attack_set.labels,
                           AttackConfig(eps=EPS, epochs=3, batch_size=64, target=target))
    before = evaluate(digits_model, test.images, test.labels, torch.zeros(test.shape), target=target)
    after = evaluate(digits_model, test.images, test.labels, res.delta, target=target)
    assert before["target_rate"] < 0.05
    assert after["target_rate"] > 0.6
    assert "target_rate" in res.history[-1] and res.history[-1]["target_rate"] > res.history[0]["target_rate"]


@pytest.mark.slow
def test_ideepfool_lowers_accuracy(digits_model, digits_train, digits_test):
    attack_set = digits_train.subset(128, seed=3)
    test = digits_test.subset(200, seed=0)
    run = IDeepFool(digits_model, attack_set.float_images(), attack_set.labels,
                    IDFConfig(eps=EPS, max_passes=1, batch_size=64, candidates=4, max_iter=5))
    res = run.run()
    m = evaluate(digits_model, test.images, test.labels, res.delta)
    assert res.delta.shape == (1, 32, 32)
    assert float(res.delta.abs().max()) <= EPS / 255 * (1 + 1e-6)
    assert m["perturbed_top1"] < m["clean_top1"] - 0.3
    assert run.backwards > 0 and res.config["method"] == "idf" and res.config["backwards"] == run.backwards
    assert {"step", "epoch", "acc", "fooled", "updated", "norm"} <= set(res.history[0])


def test_ideepfool_stops_once_xi_is_reached():
    """The ξ criterion ends the run after the first pass whose fooling ratio reaches ξ; ξ = 1 runs every pass."""
    model = Linear(classes=2, seed=4)
    x, _ = toy_data(n=16, seed=4)
    with torch.no_grad():
        y = model(x).argmax(1)
    cfg = dict(eps=255, norm="l2", max_passes=4, batch_size=16, candidates=2)
    early = ideepfool(model, x, y, IDFConfig(xi=0.1, **cfg))
    full = ideepfool(model, x, y, IDFConfig(xi=1.0, **cfg))
    assert 0.1 <= early.history[-1]["pass_fooling_ratio"] < 1.0
    assert early.config["passes"] == 1 and early.steps == 1
    assert full.config["passes"] == 4 and full.steps == 4

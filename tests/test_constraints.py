"""Constraint sets: projection onto the ε-ball, applying δ to images, random starts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from uat_core.engine.constraints import apply, check_norm, norm_of, project, random_start
from uat_core.engine.errors import UATError

deltas = arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
                elements=st.floats(-4, 4, width=32))
epsilons = st.floats(1e-3, 2.0)


@settings(max_examples=80, deadline=None)
@given(d=deltas, eps=epsilons)
def test_linf_projection_in_ball_idempotent_and_equal_to_clip(d, eps):
    delta = torch.from_numpy(d)
    p = project(delta, eps, "linf")
    assert p.shape == delta.shape
    assert float(p.abs().max()) <= eps * (1 + 1e-6)
    assert torch.equal(project(p, eps, "linf"), p)                       # idempotent
    np.testing.assert_allclose(p.numpy(), np.clip(d, -eps, eps), rtol=0, atol=0)


@settings(max_examples=80, deadline=None)
@given(d=deltas, eps=epsilons)
def test_l2_projection_in_ball_idempotent_and_closest_point(d, eps):
    delta = torch.from_numpy(d).double()
    p = project(delta, eps, "l2")
    n = float(np.linalg.norm(d.astype(np.float64)))
    assert float(p.norm()) <= eps * (1 + 1e-9)
    torch.testing.assert_close(project(p, eps, "l2"), p, rtol=1e-12, atol=1e-12)
    if n <= eps:
        assert torch.equal(p, delta)                                     # inside: untouched
    else:
        # the closest point of the ball is δ rescaled onto the sphere
        np.testing.assert_allclose(p.numpy(), d.astype(np.float64) * (eps / n), rtol=1e-9, atol=1e-12)
        assert float(p.norm()) == pytest.approx(eps, rel=1e-9)


def test_norm_of_matches_numpy():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(3, 4, 4, generator=g)
    assert norm_of(d, "linf") == pytest.approx(float(np.abs(d.numpy()).max()))
    assert norm_of(d, "l2") == pytest.approx(float(np.linalg.norm(d.numpy().ravel())), rel=1e-6)


def test_apply_broadcasts_one_delta_and_clamps():
    x = torch.tensor([[[[0.0, 0.5], [0.98, 0.2]]], [[[1.0, 0.1], [0.3, 0.99]]]])   # (2,1,2,2)
    delta = torch.tensor([[[-0.1, 0.1], [0.05, 0.0]]])                             # (1,2,2)
    out = apply(x, delta)
    assert out.shape == x.shape
    for i in range(2):                                      # every image gets the same δ
        want = np.clip(x[i].numpy() + delta.numpy(), 0, 1)
        np.testing.assert_allclose(out[i].numpy(), want, rtol=0, atol=1e-7)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    # the input is not modified in place
    assert float(x[0, 0, 1, 0]) == pytest.approx(0.98)


def test_apply_keeps_the_gradient_path_to_delta():
    x = torch.full((4, 1, 2, 2), 0.5)
    x[0, 0, 0, 0] = 1.0                                   # this pixel saturates when δ > 0
    delta = torch.full((1, 2, 2), 0.1, requires_grad=True)
    apply(x, delta).sum().backward()
    # ∂/∂δ Σ_i clamp(x_i + δ): one per unsaturated image, summed over the batch
    want = torch.full((1, 2, 2), 4.0)
    want[0, 0, 0] = 3.0
    torch.testing.assert_close(delta.grad, want)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_inside_ball(norm):
    eps = 8 / 255
    for seed in range(5):
        d = random_start((3, 8, 8), eps, norm, torch.Generator().manual_seed(seed))
        assert d.shape == (3, 8, 8)
        assert norm_of(d, norm) <= eps * (1 + 1e-6)
        assert norm_of(d, norm) > 0
    a = random_start((3, 8, 8), eps, norm, torch.Generator().manual_seed(3))
    b = random_start((3, 8, 8), eps, norm, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", ["l1", "Linf", "", "inf"])
def test_unknown_norm_is_a_one_line_user_error(bad):
    with pytest.raises(UATError) as e:
        check_norm(bad)
    assert "\n" not in str(e.value) and "norm" in str(e.value)
    with pytest.raises(UATError):
        project(torch.zeros(1, 2, 2), 0.1, bad)


def test_projection_of_zero_and_tiny_eps_is_finite():
    for norm in ("linf", "l2"):
        assert torch.equal(project(torch.zeros(2, 3, 3), 1e-6, norm), torch.zeros(2, 3, 3))
        p = project(torch.full((2, 3, 3), 1e3), 1e-6, norm)
        assert torch.isfinite(p).all() and norm_of(p, norm) <= 1e-6 * (1 + 1e-5)
    assert math.isfinite(norm_of(torch.zeros(1, 1, 1), "l2"))

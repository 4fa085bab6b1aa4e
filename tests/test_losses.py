"""The clipped cross-entropy (eq. 3) against a plain reference written with Python floats."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from uat_core.engine.losses import attack_objective, clipped_cross_entropy, targeted_objective


def ref_ce(row: list[float], label: int) -> float:
    """-log softmax(row)[label], the textbook way (with the max subtracted for stability)."""
    m = max(row)
    return -(row[label] - m - math.log(sum(math.exp(v - m) for v in row)))


def ref_grad(row: list[float], label: int) -> list[float]:
    """∂CE/∂logits = softmax(row) − onehot(label)."""
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [ei / s - (1.0 if k == label else 0.0) for k, ei in enumerate(e)]


logit_rows = st.lists(st.floats(-12, 12, allow_nan=False), min_size=3, max_size=3)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(logit_rows, min_size=1, max_size=6), beta=st.floats(0.05, 20), data=st.data())
def test_value_and_gradient_match_reference(rows, beta, data):
    labels = data.draw(st.lists(st.integers(0, 2), min_size=len(rows), max_size=len(rows)))
    ce = [ref_ce(r, y) for r, y in zip(rows, labels)]
    if any(abs(c - beta) < 1e-3 for c in ce):        # the kink itself: gradient is a convention there
        return
    logits = torch.tensor(rows, dtype=torch.float64, requires_grad=True)       # (N,3)
    y = torch.tensor(labels)
    loss = clipped_cross_entropy(logits, y, beta)
    want = sum(min(c, beta) for c in ce) / len(rows)
    assert loss.item() == pytest.approx(want, rel=1e-9, abs=1e-9)

    per = clipped_cross_entropy(logits.detach(), y, beta, reduction="none")
    assert per.tolist() == pytest.approx([min(c, beta) for c in ce], rel=1e-9, abs=1e-9)

    loss.backward()
    n = len(rows)
    for i, (r, lab, c) in enumerate(zip(rows, labels, ce)):
        want_g = [0.0] * 3 if c > beta else [g / n for g in ref_grad(r, lab)]
        assert logits.grad[i].tolist() == pytest.approx(want_g, abs=1e-9)


def test_zero_gradient_above_beta_and_plain_ce_at_infinity():
    logits = torch.tensor([[5.0, 0.0, 0.0],      # CE ≈ 0.013 (confident, right)
                           [0.0, 6.0, 0.0]],     # label 0: CE ≈ 6.005 (wrong)
                          requires_grad=True)
    y = torch.tensor([0, 0])
    clipped_cross_entropy(logits, y, beta=2.0).backward()
    assert torch.count_nonzero(logits.grad[1]) == 0          # above β: no say in the ascent direction
    assert torch.count_nonzero(logits.grad[0]) == 3

    plain = torch.nn.functional.cross_entropy(logits.detach(), y)
    assert clipped_cross_entropy(logits.detach(), y).item() == pytest.approx(plain.item())
    assert clipped_cross_entropy(logits.detach(), y, beta=math.inf).item() == pytest.approx(plain.item())
    # clipping can only lower the loss
    assert clipped_cross_entropy(logits.detach(), y, 2.0).item() < plain.item()


def test_targeted_objective_is_negative_clipped_ce_toward_target():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 4, generator=g, dtype=torch.float64) * 3
    t = 2
    want = -sum(min(ref_ce(r, t), 1.5) for r in logits.tolist()) / 7
    assert targeted_objective(logits, t, beta=1.5).item() == pytest.approx(want, rel=1e-9)
    assert attack_objective(logits, torch.zeros(7, dtype=torch.long), 1.5, target=t).item() == \
        pytest.approx(want, rel=1e-9)
    # raising the target's logit raises the objective (ascent pushes toward t)
    up = logits.clone()
    up[:, t] += 1.0
    assert targeted_objective(up, t).item() > targeted_objective(logits, t).item()


def test_attack_objective_untargeted_is_the_clipped_ce():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(9, 10, generator=g), torch.randint(0, 10, (9,), generator=g)
    assert attack_objective(logits, y, 3.0).item() == pytest.approx(clipped_cross_entropy(logits, y, 3.0).item())
    assert attack_objective(logits, y, 3.0).item() <= 3.0 + 1e-6

"""The structured bank, the strong universal attack, per-instance PGD and the vectorised DeepFool backward.

Reference computations are written plainly (one pattern, one image at a time); the "is it strong" checks run
on the shipped digits SmallCNN with small attack sets, and on a model built to be fooled by one secret pattern
that is in neither the bank nor the random draws.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from uat_core.engine.attacks import (AttackConfig, StrongConfig, StrongUniversalAttack, UniversalAttack, deepfool,
                              pattern_bank, score_bank)
from uat_core.engine.attacks.bank import best_fixed_pattern, screen
from uat_core.engine.attacks.pgd import pgd_accuracy
from uat_core.engine.constraints import apply
from uat_core.engine.errors import UATError
from uat_core.engine.evaluation import evaluate
from uat_core.engine.losses import clipped_cross_entropy

EPS = 32.0


# ---- the bank --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 32, 32), (3, 17, 23), (2, 8, 5)])
def test_bank_patterns_sit_on_the_linf_ball_for_any_shape(shape):
    eps = 8 / 255
    b = pattern_bank(shape, eps, random=3)
    assert b.patterns.shape[1:] == shape and len(b) == len(b.names) == len(set(b.names))
    structured = b.patterns[[not n.startswith("randu") for n in b.names]]
    assert torch.allclose(structured.abs(), torch.full_like(structured, eps))          # vertices: every entry ±ε
    assert (b.patterns.abs() <= eps + 1e-7).all()
    # every colour of every spatial pattern is there, so each pattern's negation is in the bank too
    periodic = b.patterns[[not n.startswith("rand") for n in b.names]]
    flat = {tuple(p.flatten().tolist()) for p in periodic}
    assert all(tuple((-p).flatten().tolist()) in flat for p in periodic)
    kinds = {n.split()[0] for n in b.names}
    assert {"const", "rows", "cols", "diag", "anti", "checker", "rand±", "randu"} <= kinds


def test_bank_l2_patterns_lie_on_the_sphere_and_bad_input_is_refused():
    b = pattern_bank((3, 16, 16), 0.5, "l2", random=2)
    assert torch.allclose(b.patterns.flatten(1).norm(dim=1), torch.full((len(b),), 0.5), atol=1e-5)
    with pytest.raises(UATError, match="kind"):
        pattern_bank((1, 8, 8), 0.1, kinds=("spiral",))
    with pytest.raises(UATError, match="shape"):
        pattern_bank((8, 8), 0.1)
    with pytest.raises(UATError, match="norm"):
        pattern_bank((1, 8, 8), 0.1, "l1")


def test_bank_stripes_have_the_stated_period():
    b = pattern_bank((1, 12, 12), 1.0, random=0)
    p = b.patterns[b.names.index("cols p=4 φ=0 c=+")][0]          # (H,W)
    assert torch.equal(p[0], torch.tensor([1., 1, -1, -1] * 3)) and torch.equal(p[0], p[7])   # same in every row
    c = b.patterns[b.names.index("checker p=2 φ=0 c=+")][0]
    assert torch.equal(c[:2, :2], torch.tensor([[1., -1], [-1, 1]]))


def test_score_bank_matches_one_pattern_one_image_at_a_time(digits_model, digits_train):
    b = pattern_bank((1, 32, 32), EPS / 255, random=2)
    P = b.patterns[::9]                                              # a dozen patterns
    x, y = digits_train.float_images()[:40], digits_train.labels[:40]
    s = score_bank(digits_model, P, x, y, beta=2.0, chunk=64)        # several patterns and image blocks per pass
    for k, p in enumerate(P):
        losses, correct = [], 0
        with torch.no_grad():
            for xi, yi in zip(x, y):
                logit = digits_model((xi + p).clamp(0, 1)[None])
                losses.append(min(F.cross_entropy(logit, yi[None]).item(), 2.0))
                correct += int(logit.argmax(1).item() == yi.item())
        assert s.loss[k].item() == pytest.approx(sum(losses) / len(losses), rel=1e-4, abs=1e-5)
        assert s.acc[k].item() == pytest.approx(correct / len(x))


def test_best_fixed_pattern_is_chosen_on_the_attack_set_and_reports_its_accuracy(digits_model, digits_train):
    sub = digits_train.subset(128, 0)
    x, y = sub.float_images(), sub.labels
    name, delta, acc = best_fixed_pattern(digits_model, x, y, EPS / 255, finalists=4)
    b = pattern_bank((1, 32, 32), EPS / 255, random=0)
    assert torch.equal(delta, b.patterns[b.names.index(name)])
    assert acc == pytest.approx(evaluate(digits_model, sub.images, sub.labels, delta)["perturbed_top1"], abs=1e-6)
    idx, sc = screen(digits_model, b.patterns, x, y, probe=16, keep=6, beta=9.0)
    assert len(idx) == 6 and (sc.loss[:-1] >= sc.loss[1:]).all()    # best first
    assert acc < 0.5                                                  # stripes at ε = 32 fool this model


# ---- the strong attack -------------------------------------------------------------------------
def _strong(model, x, y, **kw):
    cfg = dict(eps=EPS, epochs=3, restarts=4, top_k=2, probe=16, snapshot_every=0)
    cfg.update(kw)
    return StrongUniversalAttack(model, x, y, StrongConfig(**cfg))


def test_strong_attack_is_at_least_as_strong_as_alg2_and_the_best_fixed_pattern(digits_model, digits_train):
    sub = digits_train.subset(256, 0)
    x, y = sub.float_images(), sub.labels
    run = _strong(digits_model, x, y)
    kinds = [ev.kind for ev in run]
    assert kinds[0] == "screen" and kinds[-1] == "done" and "round" in kinds and "step" in kinds
    res = run.result
    plain = UniversalAttack(digits_model, x, y, AttackConfig(eps=EPS, epochs=3, snapshot_every=0)).run()

    def objective(d):
        with torch.no_grad():
            return clipped_cross_entropy(digits_model(apply(x, d)), y, 9.0).item()
    assert objective(res.delta) >= objective(plain.delta) - 1e-6
    assert objective(res.delta) >= objective(res.best_fixed) - 1e-6
    assert res.delta.abs().max() <= EPS / 255 + 1e-6
    c = res.config
    assert c["attack"] == "strong" and c["start"] in {r["start"] for r in c["leaderboard"]}
    assert c["best_fixed"]["name"] and 0 <= c["best_fixed"]["acc"] <= 1
    json.dumps(c, allow_nan=False)                                    # metrics.json-safe
    # the final δ leaves no more attack images correct than any refined start or the best fixed pattern
    acc = evaluate(digits_model, x, y, res.delta)["perturbed_top1"]
    measured = [r["acc"] for r in c["leaderboard"] if r["acc"] is not None] + [c["best_fixed"]["acc"]]
    assert acc <= min(measured) + 1e-6
    assert not digits_model.training and all(p.requires_grad for p in digits_model.parameters())
    # select="loss": the refined start with the highest attack-set objective
    by_loss = _strong(digits_model, x, y, select="loss").run()
    best = max((r for r in by_loss.config["leaderboard"] if r["loss"] is not None), key=lambda r: r["loss"])
    assert best["start"] == by_loss.config["start"]


def test_the_best_fixed_pattern_competes_for_the_final_delta(digits_model, digits_train, monkeypatch):
    """When no refinement beats the fixed baseline on the attack set, the baseline itself is returned."""
    sub = digits_train.subset(128, 0)
    monkeypatch.setattr(StrongUniversalAttack, "_objective", lambda self, model, d: (99.0, 1.0))  # all useless
    res = _strong(digits_model, sub.float_images(), sub.labels, epochs=2).run()
    assert res.config["start"] == "fixed " + res.config["best_fixed"]["name"]
    assert torch.equal(res.delta, res.best_fixed)
    with pytest.raises(UATError, match="selection"):
        StrongConfig(select="median").validate()


class Planted(nn.Module):
    """Class 0 unless the input correlates with one secret pattern, then class 1 (a model made to be fooled by
    exactly one perturbation). Clean images carry no such correlation, so clean accuracy is 100%."""

    def __init__(self, secret: torch.Tensor):
        super().__init__()
        self.register_buffer("s", secret / secret.norm())
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        score = ((x - 0.5).flatten(1) @ self.s.flatten()) * self.w       # (N,)
        return torch.stack([torch.full_like(score, 1.5), 4.0 * score], 1)


def test_strong_attack_finds_a_planted_pattern_that_is_in_neither_the_bank_nor_the_random_draws():
    g = torch.Generator().manual_seed(123)
    shape = (3, 16, 16)
    blobs = torch.randn(3, 4, 4, generator=g)                         # a smooth, irregular secret (4×4 blocks)
    secret = F.interpolate(blobs[None], size=(16, 16), mode="nearest")[0].sign()
    x = 0.5 + 0.02 * torch.randn(64, *shape, generator=g)
    y = torch.zeros(64, dtype=torch.long)
    model = Planted(secret)
    eps = 8.0
    bank = pattern_bank(shape, eps / 255, random=16)
    cos = (bank.patterns.flatten(1) @ secret.flatten()) / (bank.patterns.flatten(1).norm(dim=1) * secret.norm())
    assert cos.abs().max() < 0.5                                       # not planted in the bank
    res = _strong(model, x, y, eps=eps, restarts=8, epochs=4, batch_size=16).run()
    fooled = 1 - evaluate(model, x, y, res.delta)["perturbed_top1"]
    fixed = 1 - evaluate(model, x, y, res.best_fixed)["perturbed_top1"]
    assert fooled == 1.0 and fixed < 0.5
    align = (res.delta.flatten() @ secret.flatten()) / (res.delta.norm() * secret.norm())
    assert align > 0.9


def test_strong_attack_stops_early_is_seeded_and_restores_the_model(digits_model, digits_train):
    sub = digits_train.subset(128, 1)
    x, y = sub.float_images(), sub.labels
    a = _strong(digits_model, x, y, epochs=2, batch_size=64).run()
    b = _strong(digits_model, x, y, epochs=2, batch_size=64).run()
    assert torch.equal(a.delta, b.delta) and a.config["start"] == b.config["start"]
    run = _strong(digits_model, x, y, epochs=4, batch_size=32)
    for ev in run:
        if ev.kind == "step" and ev.step == 3:
            run.stop()
    assert run.result.stopped_early and run.result.steps == 3 and run.result.delta.abs().max() <= EPS / 255 + 1e-6
    assert not digits_model.training and all(p.requires_grad for p in digits_model.parameters())


def test_strong_plan_costs_about_twice_alg2_and_gives_the_winner_all_its_epochs(digits_model, digits_train):
    x, y = digits_train.float_images()[:64], digits_train.labels[:64]
    run = StrongUniversalAttack(digits_model, x, y, StrongConfig(eps=EPS, epochs=10))
    assert run.plan == [(5, 1), (3, 2), (2, 2), (1, 5)]
    assert sum(e for _, e in run.plan) == 10 and sum(n * e for n, e in run.plan) == 20
    one = StrongUniversalAttack(digits_model, x, y, StrongConfig(eps=EPS, epochs=3, init="zero"))
    assert one.plan == [(1, 3)] and one.n_starts() == 1


@pytest.mark.parametrize("kw, words", [({"restarts": 0}, "restarts"), ({"restarts": -1}, "restarts"),
                                       ({"restarts": 10**7}, "restarts"), ({"init": "bank,warm"}, "init"),
                                       ({"top_k": 0}, "top-k"), ({"rounds": -1}, "rounds"), ({"probe": 0}, "probe"),
                                       ({"eps": 0}, "eps"), ({"optimizer": "lbfgs"}, "optimizer")])
def test_strong_config_rejects_bad_values_in_one_line(kw, words):
    with pytest.raises(UATError, match=words):
        StrongConfig(**kw).validate()


def test_cosine_schedule_decays_the_step_to_zero(digits_model, digits_train):
    x, y = digits_train.float_images()[:256], digits_train.labels[:256]
    cfg = AttackConfig(eps=EPS, epochs=2, batch_size=32, schedule="cosine", snapshot_every=0)
    res = UniversalAttack(digits_model, x, y, cfg).run()
    taus = [h["tau"] for h in res.history]
    assert taus[0] == pytest.approx(0.1 * EPS) and all(a >= b for a, b in zip(taus, taus[1:]))
    assert taus[-1] < 0.05 * taus[0]
    with pytest.raises(UATError, match="schedule"):
        AttackConfig(schedule="warmup").validate()


# ---- per-instance PGD and DeepFool -------------------------------------------------------------
def test_pgd_accuracy_is_an_upper_bound_on_the_universal_attack(digits_model, digits_test):
    sub = digits_test.subset(100, 0)
    clean = evaluate(digits_model, sub.images, sub.labels)["clean_top1"]
    pgd = pgd_accuracy(digits_model, sub.images, sub.labels, eps=EPS, steps=5)
    tiny = pgd_accuracy(digits_model, sub.images, sub.labels, eps=0.01, steps=2)
    assert pgd < 0.2 < clean and tiny == pytest.approx(clean, abs=0.02)
    assert all(p.requires_grad for p in digits_model.parameters())


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_vectorised_deepfool_backward_matches_the_per_class_loop(digits_model, digits_test, norm):
    x = digits_test.float_images()[:12]
    r1, f1, n1 = deepfool(digits_model, x, norm, max_iter=6, batched=True)
    r2, f2, n2 = deepfool(digits_model, x, norm, max_iter=6, batched=False)
    assert torch.allclose(r1, r2, atol=1e-5) and torch.equal(f1, f2) and n1 == n2 and f1.float().mean() > 0.5


# ---- the command line --------------------------------------------------------------------------
@pytest.mark.parametrize("extra, words", [
    (["--strong", "--restarts", "0"], "restarts"), (["--strong", "--restarts", "-2"], "restarts"),
    (["--strong", "--init", "warm"], "init"), (["--strong", "--method", "idf"], "idf"),
    (["--restarts", "3"], "needs --strong"), (["--strong", "--top-k", "100000"], "top-k"),
    (["--strong", "--step-decay", "0.5"], "step-decay")])
def test_strong_cli_bad_input_is_one_line_before_any_work(cli, tmp_path, extra, words):
    from uat_core.zoo import ZOO_DIR
    rc, out, err = cli("attack", "--dataset", "digits", "--checkpoint", ZOO_DIR / "digits_smallcnn_natural.pt",
                       "--eps", "32", "--out", tmp_path / "o", "--quiet", *extra)
    assert rc == 2 and words in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_strong_cli_writes_which_attack_and_start_made_delta(cli, tmp_path):
    from uat_core.zoo import ZOO_DIR
    common = ["attack", "--dataset", "digits", "--checkpoint", ZOO_DIR / "digits_smallcnn_uat.pt", "--eps", "32",
              "--attack-size", "128", "--epochs", "2", "--eval-size", "100", "--quiet"]
    rc, out, err = cli(*common, "--strong", "--restarts", "2", "--top-k", "2", "--out", tmp_path / "s")
    assert rc == 0, err
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert m["attack"] == "strong" and m["start"] == m["config"]["start"] and m["leaderboard"]
    assert m["best_fixed"]["name"] and "best fixed pattern" in out
    assert m["beats_best_fixed"] == (m["perturbed_top1"] < m["best_fixed"]["perturbed_top1"])
    rc, out, err = cli(*common, "--out", tmp_path / "p")
    p = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert rc == 0 and p["attack"] == "alg2" and p["start"] == "zero" and p["best_fixed"]["name"]

"""Tests for universal adversarial training (uat_core.engine.training, ``python -m uat_core train``).

Everything runs on the bundled digits data with the small CNN (one CPU thread, set by conftest), in a few
seconds per test. ε = 32 (0-255 units) is the digits budget used throughout the project.
"""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import time

import pytest
import torch
import torch.nn.functional as F

from uat_core import cli
from uat_core.engine.checkpoint import read_checkpoint
from uat_core.engine.errors import UATError
from uat_core.recipes.pipeline import make_trainer, new_model, robustness_report
from uat_core.engine.training import Trainer, TrainConfig

EPS = 32.0                     # digits ε, 0-255 units
E = EPS / 255                  # the same in pixel units


@pytest.fixture(scope="module")
def digits(digits_train, digits_test):
    return digits_train, digits_test


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=32, lr=0.05, augment=False, flip=False, eps=EPS, track_every=0,
                snapshot_every=0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def run_cli(*argv) -> int:
    return cli.main([str(a) for a in argv])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# ---------------------------------------------------------------------------------------------------
# The headline claim: a few seconds of UAT buys robustness to a fresh universal attack
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_uat_is_clearly_more_robust_than_natural(digits):
    train, test = digits
    test = test.subset(250, 0)
    out = {}
    for algo in ("natural", "uat"):
        tr = make_trainer("smallcnn", train, cfg(algorithm=algo, epochs=2, lr=0.1, schedule="onecycle", seed=1))
        res = tr.run()
        # the paper's protocol: a fresh Alg. 2 attack from scratch, same budget and seed for both models
        out[algo] = robustness_report(res.model, train, test, eps=EPS, attack_size=400, epochs=5, seed=0)
    nat, uat = out["natural"], out["uat"]
    assert nat["clean_top1"] > 0.85 and uat["clean_top1"] > 0.75        # both learned the task
    assert nat["robust_top1"] < 0.5                                      # the attack works on the natural model
    assert uat["robust_top1"] > nat["robust_top1"] + 0.25, (nat, uat)    # seen margins: 0.45-0.55


# ---------------------------------------------------------------------------------------------------
# Cost: forward and backward passes counted with hooks
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo,extra,per_step", [
    ("natural", {}, 1), ("lowcost", {}, 1), ("uat", {}, 2), ("fgsm", {}, 2),
    ("fgsm", {"fgsm_random_start": True}, 2), ("pgd", {"pgd_steps": 3}, 4)])
def test_passes_per_step_counted_with_hooks(digits, algo, extra, per_step):
    train = digits[0].subset(64, 0)
    tr = make_trainer("smallcnn", train, cfg(algorithm=algo, epochs=2, **extra))
    counts = {"forward": 0, "backward": 0}

    def on_forward(module, inputs, output):                  # the last layer: every pass goes through it
        counts["forward"] += 1
        if output.requires_grad:
            output.register_hook(lambda g: counts.__setitem__("backward", counts["backward"] + 1))

    tr.model.net.fc.register_forward_hook(on_forward)
    res = tr.run()
    assert res.steps == 4
    assert counts == {"forward": per_step * 4, "backward": per_step * 4}
    assert res.passes == counts


@pytest.mark.parametrize("algo", ["lowcost", "uat"])
@pytest.mark.parametrize("rule", ["fgsm", "sgd"])
def test_steps_match_a_plain_reference(digits, algo, rule):
    """Alg. 4: θ and δ updated from ONE backward at (θ_t, δ_t). Alg. 3: θ first, then δ ascends with the
    updated weights (BatchNorm running statistics untouched by the ascent pass). δ rules: eq. 6 and eq. 7.
    The reference takes the images in the trainer's order: the upsampled digits have many max-pool ties, so
    rounding-level differences of another order reroute gradients and are amplified within a few steps."""
    train = digits[0].subset(64, 3)                         # one batch: every step sees the same images
    c = cfg(algorithm=algo, epochs=4, batch_size=64, lr=0.05, schedule="constant", delta_rule=rule,
            delta_lr=2000.0)
    model0 = new_model("smallcnn", train, 0)
    ref = copy.deepcopy(model0).train()
    tr = Trainer(model0, train, c)
    res = tr.run()

    opt = torch.optim.SGD(ref.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=True)
    delta = torch.zeros(train.shape)
    for epoch in range(4):
        order = tr._order(epoch)
        x, y = train.float_images(order), train.labels[order]
        d = delta.clone().requires_grad_(algo == "lowcost")
        loss = F.cross_entropy(ref((x + d).clamp(0, 1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if algo == "lowcost":
            g = d.grad
        else:
            stats = {k: v.clone() for k, v in ref.state_dict().items() if "running" in k}
            d = delta.clone().requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(ref((x + d).clamp(0, 1)), y), d)
            ref.load_state_dict(stats, strict=False)
        if rule == "fgsm":                                  # eq. 6: δ + ε·sign(g)
            delta = torch.add(delta, g.sign(), alpha=E).clamp(-E, E)
        else:                                               # eq. 7: δ + τδ·g (the same fused add, bit for bit)
            delta = torch.add(delta, g, alpha=c.delta_lr / 255).clamp(-E, E)

    assert delta.abs().max() > E / 2                        # the reference δ moved: a real comparison
    torch.testing.assert_close(params(res.model), params(ref), atol=1e-5, rtol=1e-4)
    for k, v in ref.state_dict().items():                   # BN running statistics too
        torch.testing.assert_close(res.model.state_dict()[k].float(), v.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(res.delta, delta, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# δ: in the ball, universal, and the ascent step hurts
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo,rule,delta_lr", [("uat", "fgsm", 1.0), ("lowcost", "fgsm", 1.0),
                                                ("uat", "sgd", 1e6), ("lowcost", "adam", 100.0)])
def test_delta_stays_in_ball_and_ascent_lowers_accuracy(digits, algo, rule, delta_lr):
    train = digits[0].subset(512, 0)
    tr = make_trainer("smallcnn", train, cfg(algorithm=algo, delta_rule=rule, delta_lr=delta_lr,
                                             track_every=1, snapshot_every=1))
    seen = []
    res = tr.run(callback=lambda ev: seen.append(ev))
    steps = [ev for ev in seen if ev.kind == "step"]
    assert len(steps) == 16 and seen[-1].kind == "done"
    assert res.delta.shape == train.shape                    # one universal (C,H,W) δ for the whole run
    for ev in steps:
        assert ev.delta is not None and ev.delta.abs().max() <= E + 1e-6
        assert ev.metrics["delta_norm"] <= EPS + 1e-3
    assert res.delta.abs().max() <= E + 1e-6
    assert res.delta.abs().max() > 0.9 * E                    # the ascent really pushed δ to the boundary
    assert len(tr.snapshots) == 16
    before = [h["acc_before"] for h in res.history]
    after = [h["acc_after"] for h in res.history]
    assert len(after) == 16
    if rule == "fgsm":                                        # the paper's rule: a strong step of size ε
        assert sum(after) / 16 <= sum(before) / 16, (before, after)


def test_track_every_and_snapshot_every(digits):
    train = digits[0].subset(256, 0)
    res = make_trainer("smallcnn", train, cfg(algorithm="lowcost", track_every=3, snapshot_every=4)).run()
    assert [h["step"] for h in res.history if "acc_after" in h] == [3, 6]
    assert all("acc_before" in h and "delta_norm" in h and "lr" in h for h in res.history)


def test_seconds_count_training_not_pauses(digits):
    """A UI that draws between events must not inflate the reported training time."""
    train = digits[0].subset(64, 0)
    tr = make_trainer("smallcnn", train, cfg(algorithm="natural", epochs=2))
    t0 = time.perf_counter()
    res = tr.run(callback=lambda ev: time.sleep(0.4) if ev.kind == "step" else None)
    wall = time.perf_counter() - t0
    assert res.steps == 4 and 0 < res.seconds < wall - 1.5


# ---------------------------------------------------------------------------------------------------
# Resume reproduces an uninterrupted run
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo,extra,n,stop", [
    ("uat", {"delta_rule": "adam", "delta_lr": 4.0, "augment": True}, 192, 8),      # 6 steps per epoch
    ("pgd", {"pgd_steps": 2, "augment": True}, 128, 6),                             # 4 steps per epoch
    ("lowcost", {"delta_pool": 3, "reseed_every": 2, "bank_share": 0.25, "augment": True}, 192, 7)])
def test_resume_mid_epoch_reproduces_uninterrupted_run(digits, algo, extra, n, stop):
    train = digits[0].subset(n, 0)
    spe = n // 32
    c = cfg(algorithm=algo, epochs=2, schedule="step", track_every=2, snapshot_every=2, **extra)
    full = make_trainer("smallcnn", train, c).run()

    saved = []
    def keep(tr):
        saved.append((copy.deepcopy(tr.model.state_dict()), copy.deepcopy(tr.state())))

    part = make_trainer("smallcnn", train, c, checkpoint_fn=keep)
    part.run(callback=lambda ev: ev.kind != "step" or ev.step < stop)     # stop mid epoch 2
    assert part.result.stopped_early and part.result.steps == stop
    assert [s["step"] for _, s in saved] == [spe, stop]      # the epoch checkpoint, then the stop

    weights, state = saved[-1]
    model = new_model("smallcnn", train, 123)                 # another init: all must come from the state
    model.load_state_dict(weights)
    resumed = Trainer(model, train, c, resume_state=state).run()
    assert resumed.steps == 2 * spe and not resumed.stopped_early
    torch.testing.assert_close(params(resumed.model), params(full.model), atol=1e-6, rtol=1e-5)
    if full.delta is not None:
        torch.testing.assert_close(resumed.delta, full.delta, atol=1e-6, rtol=1e-5)
    assert [h["step"] for h in resumed.history] == list(range(1, 2 * spe + 1))
    for a, b in zip(resumed.history, full.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------------
# The diverse adversary: a pool of δs used in turn, re-seeds scored against a plain reference
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["uat", "lowcost"])
@pytest.mark.parametrize("share", [0.0, 0.25])
def test_pool_step_matches_a_per_image_reference(digits, algo, share):
    """With a pool of m δs, image b carries member (b + t) mod m and each member ascends on the sign of its
    own images' gradient; with a bank share the first ⌊f·B⌋ images carry random bank patterns instead.
    Compare one step with a plain per-image computation summed by member."""
    from uat_core.engine.attacks.bank import pattern_bank
    from uat_core.engine.constraints import apply
    from uat_core.engine.training import step_seed
    train = digits[0].subset(96, 0)
    tr = make_trainer("smallcnn", train, cfg(algorithm=algo, delta_pool=3, bank_share=share))
    start = tr.pool.clone()
    assert (start[0] == 0).all() and torch.allclose(start[1:].abs(), torch.full_like(start[1:], E))
    ref = copy.deepcopy(tr.model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x, y, _ = tr._batch(tr._order(0), 0, 0)
    nb = int(share * 32)
    bank = pattern_bank(train.shape, E, random=0).patterns
    g = torch.Generator().manual_seed(step_seed(0, 0, 0, 0))               # the step's own generator
    fixed = bank[torch.randint(0, len(bank), (nb,), generator=g)]           # (nb,C,H,W)
    a = torch.arange(32 - nb) % 3                                           # step 0
    ref.train()
    if algo == "uat":                                      # Alg. 3: weights first, then δ at the new weights
        ref_opt.zero_grad()
        F.cross_entropy(ref(apply(x, torch.cat([fixed, start[a]]))), y).backward()
        ref_opt.step()
    D = torch.cat([fixed, start[a]]).requires_grad_(True)                    # (B,C,H,W) one δ per image
    gD, = torch.autograd.grad(F.cross_entropy(ref(apply(x, D)), y), D)
    G = torch.zeros_like(start).index_add_(0, a, gD[nb:])                   # (m,C,H,W) summed by member
    want = (start + E * G.sign()).clamp(-E, E)
    res = tr.run(callback=lambda ev: ev.kind != "step")                     # one step
    assert res.steps == 1 and tr.passes == {"forward": 2 if algo == "uat" else 1,
                                            "backward": 2 if algo == "uat" else 1}
    torch.testing.assert_close(tr.pool, want, atol=1e-6, rtol=0)
    assert not torch.equal(tr.pool[0], start[0]) and torch.isfinite(tr.adversary.loss).all()
    j = int(tr.adversary.loss.argmax())                                          # shipped: highest last loss
    assert torch.equal(res.delta, tr.pool[j].cpu())


@pytest.mark.parametrize("source", ["bank", "random"])
def test_reseed_keeps_the_candidate_of_highest_loss(digits, source):
    from uat_core.engine.constraints import apply
    train = digits[0].subset(128, 0)
    tr = make_trainer("smallcnn", train, cfg(algorithm="lowcost", reseed_from=source, reseed_candidates=5))
    tr.model.eval()                                           # a deterministic forward for the reference
    x, y = train.float_images()[:36], train.labels[:36]
    cand = tr._candidates(0, 3)
    assert cand.shape == (5, *train.shape) and torch.allclose(cand.abs(), torch.full_like(cand, E))
    assert torch.equal(cand, tr._candidates(0, 3)) and not torch.equal(cand, tr._candidates(0, 4))
    for before in (torch.zeros(train.shape), cand[2] * 0 + E):  # δ = 0 (beaten) and a flat +ε start
        with torch.no_grad():
            tr.delta.copy_(before)
            s = 36 // 6                                           # the slice each of the 6 perturbations sees
            ref = [F.cross_entropy(tr.model(apply(x[:s], d)), y[:s]).item() for d in [before, *cand]]
            tr._reseed(x, y, 0, 3)
        best = max(range(1, 6), key=lambda k: ref[k])
        want = cand[best - 1] if ref[best] > ref[0] else before
        assert torch.equal(tr.delta, want), (ref, source)
    assert tr.adversary.reseeds["proposed"] == 2 and tr.passes["forward"] == 2 and tr.passes["backward"] == 0


def test_reseed_counts_one_forward_and_is_recorded(digits, tmp_path, capsys):
    out = tmp_path / "run"
    rc = run_cli("train", "--dataset", "digits", "--algorithm", "lowcost", "--epochs", "1", "--train-size", "256",
                 "--delta-pool", "2", "--reseed-every", "2", "--no-report", "--eval-size", "64", "--quiet",
                 "--out", out)
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["passes"] == {"forward": 4 + 2, "backward": 4}               # 4 steps, 2 re-seeds
    assert m["config"]["delta_pool"] == 2 and m["config"]["reseed_every"] == 2
    assert read_checkpoint(out / "model.pt")["meta"]["training"]["reseed_from"] == "bank"


def test_cli_init_weights_fine_tunes_from_a_checkpoint(digits, tmp_path, capsys):
    base, ft = tmp_path / "base", tmp_path / "ft"
    common = ["--dataset", "digits", "--epochs", "1", "--train-size", "128", "--no-report", "--eval-size", "64",
              "--quiet", "--lr", "1e-9", "--momentum", "0", "--weight-decay", "0"]
    assert run_cli("train", *common, "--out", base) == 0
    assert run_cli("train", *common, "--algorithm", "lowcost", "--init-weights", base / "model.pt", "--out", ft) == 0
    a, b = read_checkpoint(base / "model.pt"), read_checkpoint(ft / "model.pt")
    for k, v in a["state_dict"].items():                       # lr ≈ 0: the weights are the loaded ones
        if v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(b["state_dict"][k], v, atol=1e-6, rtol=0)
    assert b["meta"]["training"]["init_weights"] == "model.pt"
    capsys.readouterr()
    rc = run_cli("train", *common, "--model", "resnet20", "--init-weights", base / "model.pt", "--out", tmp_path / "x")
    assert rc == 2 and "smallcnn model on digits, not resnet20" in one_line_error(capsys)


# ---------------------------------------------------------------------------------------------------
# Divergence never reaches a checkpoint
# ---------------------------------------------------------------------------------------------------
def test_nan_weights_at_epoch_end_are_not_checkpointed(digits):
    train = digits[0].subset(128, 0)                          # 4 steps per epoch
    calls = []
    tr = make_trainer("smallcnn", train, cfg(algorithm="lowcost", epochs=3),
                      checkpoint_fn=lambda t: calls.append((t.step_i, torch.isfinite(params(t.model)).all().item())))

    def poison(ev):                                           # the last step of epoch 2 leaves NaN weights
        if ev.kind == "step" and ev.step == 8:
            with torch.no_grad():
                next(tr.model.parameters()).fill_(float("nan"))

    with pytest.raises(UATError, match="diverged") as e:
        tr.run(callback=poison)
    assert "\n" not in str(e.value)
    assert calls == [(4, True)]


def test_nan_loss_stops_with_one_line_error(digits, monkeypatch):
    train = digits[0].subset(128, 0)
    tr = make_trainer("smallcnn", train, cfg(algorithm="uat", epochs=2))
    real = Trainer.fwd
    monkeypatch.setattr(Trainer, "fwd",
                        lambda self, net, x: real(self, net, x) * (math.nan if self.step_i >= 5 else 1))
    with pytest.raises(UATError, match=r"diverged .* at step 6") as e:
        tr.run()
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------
# Bad input: one-line errors
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    ({"algorithm": "madry"}, "unknown algorithm"), ({"delta_rule": "rmsprop"}, "unknown update rule"),
    ({"schedule": "linear"}, "unknown schedule"), ({"eps": 0}, "eps"), ({"eps": 256}, "eps"),
    ({"eps": math.nan}, "eps"), ({"lr": 0}, "lr"), ({"lr": math.inf}, "lr"), ({"momentum": 1.0}, "momentum"),
    ({"delta_lr": 0}, "delta lr"), ({"delta_lr": -1}, "delta lr"),
    ({"delta_rule": "adam", "delta_lr": 300}, "delta lr"), ({"pgd_steps": 0}, "pgd steps"),
    ({"pgd_step_size": 0}, "PGD step size"), ({"pgd_step_size": 300}, "PGD step size"),
    ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch size"), ({"track_every": -1}, "track"),
    ({"delta_pool": 0}, "pool needs at least 1"), ({"reseed_every": -1}, "re-seed interval"),
    ({"reseed_from": "noise"}, "unknown re-seed strategy"), ({"reseed_candidates": 0}, "candidates"),
    ({"delta_pool": 2, "delta_rule": "adam"}, "not adam"), ({"bank_share": 1.0}, "bank share"),
    ({"bank_share": -0.1}, "bank share"), ({"label_smoothing": 1.0}, "label smoothing"),
    ({"label_smoothing": -0.1}, "label smoothing"), ({"label_smoothing": math.nan}, "label smoothing")])
def test_bad_config_is_a_one_line_error(kw, match):
    base = {"algorithm": "uat"}
    base.update(kw)
    with pytest.raises(UATError, match=match) as e:
        TrainConfig(**base).validate()
    assert "\n" not in str(e.value)


def test_training_set_smaller_than_a_batch(digits):
    with pytest.raises(UATError, match="smaller than one batch"):
        make_trainer("smallcnn", digits[0].subset(20, 0), cfg(batch_size=32))


@pytest.mark.parametrize("flags,match", [
    (["--algorithm", "madry"], "unknown algorithm"), (["--algorithm", "uat", "--delta-rule", "rms"], "update rule"),
    (["--algorithm", "uat", "--eps", "0"], "eps"), (["--algorithm", "pgd", "--eps", "300"], "eps"),
    (["--algorithm", "pgd", "--pgd-step-size", "-1"], "PGD step"), (["--delta-lr", "0"], "delta lr"),
    (["--lr", "-0.1"], "lr"), (["--model", "vgg"], "unknown model"), (["--epochs", "0"], "epochs"),
    (["--train-size", "0"], "train-size"), (["--report-eps", "0"], "report-eps"),
    (["--resume"], "nothing to resume"), (["--algorithm", "uat", "--delta-pool", "0"], "pool"),
    (["--algorithm", "lowcost", "--reseed-every", "-2"], "re-seed interval"),
    (["--algorithm", "uat", "--reseed-from", "gauss"], "re-seed strategy"),
    (["--init-weights", "no_such_model"], "neither a file nor a zoo model"),
    (["--label-smoothing", "1"], "label smoothing"), (["--model", "resnet20", "--width", "0"], "width"),
    (["--model", "resnet20", "--shortcut", "none"], "unknown shortcut"), (["--model", "resnet21"], "6n+2"),
    (["--model", "smallcnn", "--width", "2"], "resnet family")])
def test_cli_bad_input(tmp_path, capsys, flags, match):
    out = tmp_path / "run"
    rc = run_cli("train", "--dataset", "digits", "--out", out, "--quiet", *flags)
    assert rc == 2
    assert match in one_line_error(capsys)
    assert not out.exists() or not any(out.iterdir())          # nothing written


# ---------------------------------------------------------------------------------------------------
# The command line: contract, Ctrl-C + --resume, refusals, divergence
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_natural_contract(tmp_path):
    out = tmp_path / "nat"
    rc = run_cli("train", "--dataset", "digits", "--model", "smallcnn", "--algorithm", "natural", "--epochs", 3,
                 "--out", out, "--quiet", "--eval-size", 100, "--report-attack-size", 100,
                 "--report-attack-epochs", 2)
    assert rc == 0
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["robust_top1"] <= m["clean_top1"] <= 1
    assert m["epochs"] == 3 and m["seconds"] > 0 and m["steps"] == 3 * (1297 // 64)
    assert m["passes"] == {"forward": m["steps"], "backward": m["steps"]}
    assert m["robustness"]["attack"]["eps"] == 8.0           # --eps default; natural training ignores it
    # a second run into the same folder refuses instead of overwriting
    before = (out / "model.pt").read_bytes()
    assert run_cli("train", "--dataset", "digits", "--epochs", 1, "--out", out, "--quiet") == 2
    assert (out / "model.pt").read_bytes() == before


LOWCOST = ["train", "--dataset", "digits", "--algorithm", "lowcost", "--eps", EPS, "--epochs", 2, "--train-size", 256,
           "--batch-size", 32, "--no-report", "--eval-size", 100, "--quiet", "--track-every", 3]


def _interrupt_at(monkeypatch, step: int):
    """Deliver a real SIGINT (as Ctrl-C does) to this process while step ``step`` is being computed."""
    real = Trainer._step

    def step_then_ctrl_c(self, *a, **kw):
        if self.step_i + 1 == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **kw)
    monkeypatch.setattr(Trainer, "_step", step_then_ctrl_c)


@pytest.mark.slow
def test_cli_ctrl_c_saves_and_resume_continues_exactly(tmp_path, monkeypatch, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli(*LOWCOST, "--out", full) == 0

    handler = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as mp:
        _interrupt_at(mp, 5)                                   # mid epoch 1 (8 steps per epoch)
        assert run_cli(*LOWCOST, "--out", part) == 130
    assert signal.getsignal(signal.SIGINT) is handler          # the CLI's handler is gone again
    assert "--resume" in capsys.readouterr().err
    assert not (part / "model.pt").exists() and not (part / "metrics.json").exists()
    st = read_checkpoint(part / "checkpoint.pt")["extra"]
    assert st["step"] == 5 and st["epoch"] == 0

    assert run_cli(*LOWCOST, "--out", part, "--resume") == 0
    a = read_checkpoint(full / "model.pt")["state_dict"]
    b = read_checkpoint(part / "model.pt")["state_dict"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.load(part / "delta.pt"), torch.load(full / "delta.pt"), atol=1e-6, rtol=0)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, part))
    assert mb["steps"] == ma["steps"] == 16 and mb["passes"] == ma["passes"]
    assert [h["loss"] for h in mb["history"]] == pytest.approx([h["loss"] for h in ma["history"]], rel=1e-5)
    assert mb["clean_top1"] == pytest.approx(ma["clean_top1"])

    # resuming a finished run is refused, nothing touched
    capsys.readouterr()
    before = (part / "checkpoint.pt").read_bytes()
    assert run_cli(*LOWCOST, "--out", part, "--resume") == 2
    assert "already finished" in one_line_error(capsys)
    assert (part / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("change,match", [(["--lr", "0.2"], "lr=0.05"), (["--eps", "16"], "eps=32"),
                                          (["--train-size", "192"], "256 images"),
                                          (["--algorithm", "uat"], "algorithm='lowcost'"),
                                          (["--model", "resnet20"], "smallcnn model")])
def test_cli_resume_with_another_config_is_refused(tmp_path, monkeypatch, capsys, change, match):
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        _interrupt_at(mp, 3)
        assert run_cli(*LOWCOST, "--epochs", 1, "--out", out) == 130
    capsys.readouterr()
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    flags = LOWCOST + ["--epochs", 1, "--out", out, "--resume"]
    i = flags.index(change[0]) if change[0] in flags else None
    flags = flags[:i] + flags[i + 2:] if i is not None else flags
    assert run_cli(*flags, *change) == 2
    assert match in one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files        # nothing overwritten


def test_cli_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "nan"
    real = Trainer.fwd
    # finite for epoch 1 (8 steps), NaN logits from step 11 on
    monkeypatch.setattr(Trainer, "fwd",
                        lambda self, net, x: real(self, net, x) * (math.nan if self.step_i >= 10 else 1))
    assert run_cli(*LOWCOST, "--out", out) == 2
    assert "diverged" in one_line_error(capsys)
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()
    obj = read_checkpoint(out / "checkpoint.pt")
    assert obj["extra"]["step"] == 8
    assert all(torch.isfinite(v).all() for v in obj["state_dict"].values() if v.is_floating_point())


def test_label_smoothing_step_matches_a_plain_reference(digits):
    """Natural training with label smoothing ε_ls: the loss is (1 − ε_ls)·CE + ε_ls·mean_k(−log p_k),
    written out by hand here; one epoch of steps gives the same weights."""
    train = digits[0].subset(64, 3)
    ls = 0.3
    c = cfg(algorithm="natural", epochs=3, batch_size=64, schedule="constant", label_smoothing=ls)
    model0 = new_model("smallcnn", train, 0)
    ref = copy.deepcopy(model0).train()
    plain = copy.deepcopy(model0).train()
    tr = Trainer(model0, train, c)
    res = tr.run()
    opts = [torch.optim.SGD(m.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                            nesterov=True) for m in (ref, plain)]
    for epoch in range(3):
        order = tr._order(epoch)
        x, y = train.float_images(order), train.labels[order]
        logp = torch.log_softmax(ref(x), 1)                                   # (B,K)
        loss = -(1 - ls) * logp.gather(1, y[:, None]).mean() - ls * logp.mean()
        opts[0].zero_grad()
        loss.backward()
        opts[0].step()
        loss = F.cross_entropy(plain(x), y)                                   # the same steps without smoothing
        opts[1].zero_grad()
        loss.backward()
        opts[1].step()
    torch.testing.assert_close(params(res.model), params(ref), atol=1e-5, rtol=1e-4)
    assert (params(res.model) - params(plain)).abs().max() > 1e-3             # smoothing changed the steps

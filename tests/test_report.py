"""The zoo report: figures come from real attacks and evaluations, the cache reuses them, targets are judged right."""
import json

import pytest
import torch

from uat_core.zoo import report
from uat_core import zoo
from uat_core.engine.data import load_dataset
from uat_core.engine.errors import UATError


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    data = report.write_report("digits", None, 64, tmp / "results.md", attack_epochs=1, cache=tmp / "cache",
                               pgd_size=50, only=ONLY)
    return tmp, data


ONLY = ["natural", "uat", "lowcost"]     # three of the zoo's models keep the test quick; the report takes any


def test_report_rows_are_the_zoo_models_and_match_a_plain_evaluation(digits_report):
    tmp, data = digits_report
    names = [e["name"] for e in zoo.list_models("digits") if e["algorithm"] in ONLY]
    assert [r["name"] for r in data["rows"]] == names and len(names) == len(ONLY)
    assert data["eps"] == [32, 48, 64] and data["attack_size"] == 64 and data["attack_epochs"] == 1
    test = load_dataset("digits", "test", progress=False)
    model, _ = zoo.load_zoo_model("digits_smallcnn_natural")
    with torch.no_grad():
        plain = (model(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    row = data["rows"][names.index("digits_smallcnn_natural")]
    assert row["clean_top1"] == pytest.approx(plain, abs=1e-6)
    for r in data["rows"]:                           # every attack at ε, 1.5ε and 2ε, the baseline beside it
        for e in (32, 48, 64):
            for k in ("robust_top1", "alg2_top1", "fixed_top1", "pgd_top1"):
                assert 0 <= r[f"{k}@{e}"] <= 1, (r["name"], k, e)
            assert r[f"fixed_pattern@{e}"] and r[f"start@{e}"]
            assert r[f"pgd_top1@{e}"] <= r["clean_top1"] + 1e-6      # per-instance PGD never helps the model
    t = data["transfer"]                             # the diagonal is each model's own attack at ε
    for i, r in enumerate(data["rows"]):
        assert t["matrix"][i][i] == pytest.approx(r["robust_top1@32"], abs=1e-6)
    md = (tmp / "results.md").read_text()
    assert data["command"] in md and "--attack-epochs 1" in data["command"]
    assert json.loads((tmp / "results.json").read_text())["rows"] == json.loads(json.dumps(data["rows"]))
    for label in ("natural", "uFGSM (Alg. 3)", "low-cost uFGSM (Alg. 4)"):
        assert f"| {label} |" in md
    assert "best fixed pattern" in md and "per-instance PGD" in md


def test_cached_perturbations_are_reused_not_recomputed(digits_report, monkeypatch):
    tmp, data = digits_report
    files = sorted((tmp / "cache").glob("*.pt"))
    assert len(files) == 2 * 3 * len(data["rows"])     # Alg. 2 and the strong attack at three ε for every model

    def refuse(*a, **k):
        raise AssertionError("the cache should have been used")
    monkeypatch.setattr(report.protocol, "attack_run", refuse)
    again = report.write_report("digits", None, 64, tmp / "again.md", attack_epochs=1, cache=tmp / "cache",
                                pgd_size=50, only=ONLY)
    assert again["rows"] == data["rows"] and again["transfer"] == data["transfer"]
    assert data["reused"] == 0 and again["reused"] == again["attacks"] == len(files)
    assert f"{len(files)} of its {len(files)} perturbations were reused" in (tmp / "again.md").read_text()
    assert "were reused" not in (tmp / "results.md").read_text()


def test_bad_sizes_are_one_line_errors(tmp_path):
    with pytest.raises(UATError, match="attack-size"):
        report.write_report("digits", None, 0, tmp_path / "r.md")
    with pytest.raises(UATError, match="attack-epochs"):
        report.write_report("digits", None, 10, tmp_path / "r.md", attack_epochs=0)
    assert not (tmp_path / "r.md").exists()


def _fake(nat=(0.90, 0.45, 0.30, 0.20), fgsm=0.5, low=(0.80, 0.72), uat=(0.85, 0.81)):
    def row(a, c, r8, r12=None, r16=0.1):
        return {"algorithm": a, "clean_top1": c, "robust_top1@8": r8, "robust_top1@12": r12, "robust_top1@16": r16}
    return {"eps": [8, 12, 16], "rows": [row("natural", nat[0], nat[1], nat[2], nat[3]), row("fgsm", 0.8, fgsm),
                                         row("lowcost", *low), row("uat", *uat)]}


def test_targets_are_judged_from_the_figures():
    t = {x["target"]: x for x in report.targets(_fake())}
    met = {k: v["met"] for k, v in t.items()}
    assert met["natural: clean ≥ 88%"] is True
    assert met["natural: the attack takes ≥ 40 points at ε = 8"] is True          # 90 - 45 = 45
    assert met["natural: the attack takes ≥ 65 points at ε = 16"] is True         # 90 - 20 = 70
    assert met["uat: attacked within 5 points of clean at ε = 8"] is True          # 4 points
    assert met["lowcost: attacked within 10 points of clean at ε = 8"] is True     # 8 points
    assert met["ordering under attack at ε = 8: natural < FGSM < low-cost ≤ uFGSM"] is True
    assert t["natural: the attack takes ≥ 40 points at ε = 8"]["measured"] == "45.0 points"
    bad = {x["target"]: x["met"] for x in report.targets(_fake(nat=(0.85, 0.50, 0.40, 0.25), fgsm=0.9,
                                                                uat=(0.80, 0.70)))}
    assert bad["natural: clean ≥ 88%"] is False
    assert bad["natural: the attack takes ≥ 40 points at ε = 8"] is False
    assert bad["uat: clean ≥ 82%"] is False and bad["uat: attacked within 5 points of clean at ε = 8"] is False
    assert bad["ordering under attack at ε = 8: natural < FGSM < low-cost ≤ uFGSM"] is False
    assert bad["natural, ε = 12: no more than the reference attack's 32% left"] is False
    strong = "natural: the strong attack leaves at most 55% at ε = 8"
    below = "natural: the strong attack at least 3 points below the best fixed pattern at ε = 8"
    assert met[strong] is True and met[below] is None                 # no fixed-pattern figure: not judged
    weak = _fake(nat=(0.90, 0.60, 0.30, 0.20))
    weak["rows"][0]["fixed_top1@8"] = 0.62
    w = {x["target"]: x for x in report.targets(weak)}
    assert w[strong]["met"] is False and w[below]["met"] is False and w[below]["measured"] == "2.0 points"
    missing = _fake()
    missing["rows"] = [r for r in missing["rows"] if r["algorithm"] != "fgsm"]
    assert {x["target"]: x["met"] for x in report.targets(missing)}[
        "ordering under attack at ε = 8: natural < FGSM < low-cost ≤ uFGSM"] is None


def test_the_paper_picture_targets_take_the_lowest_figure_and_the_largest_loss():
    d = _fake(nat=(0.91, 0.30, 0.2, 0.1))
    d["rows"][0].update({"fixed_top1@8": 0.24})                      # the fixed pattern is what meets the target
    pool = {"algorithm": "uat_pool", "clean_top1": 0.90, "robust_top1@8": 0.85, "fixed_top1@8": 0.86,
            "heldout_clean_top1@8": 0.89, "heldout_robust_top1@8": 0.80}
    d["rows"].append(pool)
    t = {x["target"]: x for x in report.targets(d)}
    nat = t["natural (the paper's picture): clean ≥ 90% and at most 25% left at ε = 8"]
    assert nat["met"] is True and nat["measured"] == "91.0 / 24.0"
    loss = t["uFGSM + pool: loses at most 8 points to the strong attack, every fixed pattern and the held-out "
             "protocol at ε = 8"]
    assert loss["measured"] == "9.0 points" and loss["met"] is False      # the held-out half: 89 - 80
    assert t["uFGSM + pool: clean ≥ 88%"]["met"] is True and t["uFGSM: clean ≥ 88%"]["met"] is False
    assert t["low-cost + pool: clean ≥ 88%"]["met"] is None                # no such model in the report
    pool["heldout_robust_top1@8"] = 0.82
    assert {x["target"]: x for x in report.targets(d)}[loss["target"]]["met"] is True   # 7 points at most now
    assert report.lowest({"robust_top1@8": 0.5}, 8) == 0.5 and report.lowest({"fixed_top1@8": 0.1}, 8) is None


def test_heldout_protocol_is_added_to_the_report_and_matches_the_pipeline(digits_report, tmp_path, monkeypatch):
    """`zoo heldout`: δ built on one half of the test split, scored on the other; the figures added to the report
    are those of pipeline.heldout_report, and the rest of the report is kept; the manifest gets the same figures."""
    from uat_core.recipes import protocol
    from uat_core.engine.evaluation import evaluate
    from uat_core.recipes.pipeline import heldout_report
    src, data = digits_report
    (tmp_path / "results.json").write_text((src / "results.json").read_text())
    written = []
    monkeypatch.setattr(report, "write_manifest", written.append)          # the shipped manifest stays as it is
    out = report.add_heldout("digits", None, tmp_path / "results.md", only=["natural"])
    nat = next(r for r in out["rows"] if r["algorithm"] == "natural")
    others = [r for r in out["rows"] if r["algorithm"] != "natural"]
    assert all("heldout_strong_top1@32" not in r for r in others)
    assert {k: v for k, v in nat.items() if "heldout" not in k} == \
        next(r for r in data["rows"] if r["algorithm"] == "natural")            # the other figures kept
    model, _ = zoo.load_zoo_model("digits_smallcnn_natural")
    test = load_dataset("digits", "test", progress=False)
    shipped = zoo.load_zoo_perturbation("digits_smallcnn_natural")
    ref = heldout_report(model, test, 32, data["attack_size"], shipped, data["attack_epochs"])
    for k in ("heldout_strong_top1", "heldout_fixed_top1", "train_strong_on_heldout_top1", "heldout_robust_top1"):
        assert nat[f"{k}@32"] == pytest.approx(ref[k], abs=1e-6)
    assert nat["heldout_robust_top1@32"] == min(nat["heldout_strong_top1@32"], nat["heldout_fixed_top1@32"],
                                                nat["train_strong_on_heldout_top1@32"])
    # the scoring half is disjoint from the attack images and the shipped δ's figure is recomputed on it alone
    build, score = protocol.heldout_sets(test, data["attack_size"])
    assert len(build) == data["attack_size"] and len(score) == len(test) - len(test) // 2
    plain = evaluate(model, score.images, score.labels, shipped, 10)["perturbed_top1"]
    assert nat["train_strong_on_heldout_top1@32"] == pytest.approx(plain, abs=1e-6)
    md = (tmp_path / "results.md").read_text()
    assert "## Held-out protocol (ε = 32)" in md
    assert "python -m uat_core.zoo heldout --dataset digits --only natural" in md
    assert f"**{100 * nat['heldout_robust_top1@32']:.1f}**" in md
    with pytest.raises(UATError, match="no digits model 'pgdx'"):
        report.add_heldout("digits", None, tmp_path / "results.md", only=["pgdx"])
    # the manifest entry of the same model (name and sha256) carries the report's held-out figures, no other entry
    man, = written
    rec = man["models"]["digits_smallcnn_natural"]["heldout"]
    assert rec["eps"] == 32 and rec["heldout_robust_top1"] == nat["heldout_robust_top1@32"]
    assert rec["train_strong_on_heldout_top1"] == nat["train_strong_on_heldout_top1@32"]
    before = zoo.read_manifest()["models"]
    assert {k: e for k, e in man["models"].items() if k != "digits_smallcnn_natural"} == \
        {k: e for k, e in before.items() if k != "digits_smallcnn_natural"}          # no other entry touched
    stale = dict(out, rows=[dict(nat, **{"heldout_sha256@32": "0" * 64})])         # a model rebuilt since
    assert report.record_heldout(stale) == 0 and len(written) == 1

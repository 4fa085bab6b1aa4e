"""The vulnerability study (uat_core/recipes/study.py, bench/vulnerability_study.py): rows are valid commands, the
table and the plot show the figures they are given, and bad requests are one-line errors."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from uat_core import cli, plots, zoo
from uat_core.recipes import study
from uat_core.engine.errors import UATError
from uat_core.engine.models import arch_name
from uat_core.recipes.profiles import train_defaults

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("row", list(study.ROWS))
def test_every_row_is_valid_fields_and_the_command_says_the_same(row):
    fields = dict(study.ROWS[row][3])
    arch_name(fields.pop("model"), fields.pop("width", 1), fields.pop("shortcut", "projection"))   # a real arch
    cfg = train_defaults("cifar10", **fields).validate()                  # TrainConfig fields, in range
    argv = shlex.split(study.command(row))[3:]                             # after "python -m uat_core"
    args = cli.build_parser().parse_args(argv)
    args.argv = argv
    run = cli.train_run(args)                                              # the CLI reads the same recipe back
    assert run.config == cfg and run.out.as_posix() == f"runs/study/{row}" and not run.report
    assert run.data.dataset == "cifar10"
    if row != "base":
        assert study.ROWS[row][3] != study.BASE


def test_with_replaces_fields_and_leaves_base_alone():
    a = study._with(epochs=30, augment=False, label_smoothing=0.1)
    assert a["epochs"] == 30 and a["augment"] is False and a["label_smoothing"] == 0.1
    assert study.BASE["epochs"] == 10 and "augment" not in study.BASE            # BASE itself is untouched


def fake(row: str, strong: float) -> dict:
    return {"row": row, "factor": study.ROWS[row][0], "change": study.ROWS[row][1], "clean_top1": 0.85,
            "train_top1": 0.9, "alg2_top1": strong + 0.1, "fixed_top1": strong + 0.05, "strong_top1": strong,
            "train_seconds": 1800.0}


def test_results_are_ordered_base_first_then_most_vulnerable_and_tabled(tmp_path):
    for r, s in (("ls01", 0.40), ("base", 0.55), ("noaug", 0.30)):
        (tmp_path / f"{r}.json").write_text(json.dumps(fake(r, s)))
    got = study.load_results(tmp_path)
    assert [r["row"] for r in got] == ["base", "noaug", "ls01"]
    md = study.table(got).splitlines()
    assert md[0].startswith("| row |") and len(md) == 2 + 3
    assert "**30.0**" in md[3] and "| 30 min |" in md[3] and "`noaug`" in md[3]


def test_study_figure_draws_the_four_figures_of_every_row():
    rows = [fake("base", 0.55), fake("ls01", 0.40)]
    fig = plots.study_figure(rows)
    assert [t.name for t in fig.data] == ["clean", "Alg. 2 from δ = 0", "best fixed pattern (baseline)",
                                         "strong attack"]
    strong = fig.data[3]
    assert list(strong.x) == pytest.approx([55.0, 40.0]) and strong.y[0].startswith("base")
    assert list(fig.data[0].x) == pytest.approx([85.0, 85.0])


def test_script_lists_rows_and_refuses_unknown_ones():
    out = subprocess.run([sys.executable, "bench/vulnerability_study.py", "--list"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert all(f"runs/study/{r}" in out for r in study.ROWS)
    bad = subprocess.run([sys.executable, "bench/vulnerability_study.py", "--rows", "nope"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown row 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_shipping_an_untrained_or_unknown_row_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "RUNS", tmp_path)
    with pytest.raises(UATError, match="not trained yet"):
        zoo.add_study_model("ls01")
    with pytest.raises(UATError, match="unknown study row"):
        zoo.add_study_model("ls99")


def test_study_models_stay_out_of_the_zoo_listing(monkeypatch):
    man = {"models": {"a": {"dataset": "cifar10", "algorithm": "natural"},
                      "b": {"dataset": "cifar10", "algorithm": "natural", "group": "study"}}}
    monkeypatch.setattr(zoo.store, "read_manifest", lambda: man)
    assert [m["name"] for m in zoo.list_models("cifar10")] == ["a"]
    assert [m["name"] for m in zoo.list_models("cifar10", group="study")] == ["b"]
    assert len(zoo.list_models(group=None)) == 2


def test_the_natural_twin_is_the_shipped_study_model_nearest_in_clean_accuracy(monkeypatch, tmp_path):
    def entry(clean, attacked, group="study", file=True):
        name = f"m{clean}_{attacked}"
        if file:
            (tmp_path / f"{name}.pt").write_bytes(b"")
        return name, {"dataset": "cifar10", "algorithm": "natural", "group": group, "file": f"{name}.pt",
                      "clean_top1": clean, "perturbed_top1": attacked}
    models = dict([entry(0.876, 0.566, "zoo"), entry(0.826, 0.391), entry(0.866, 0.497), entry(0.870, None),
                   entry(0.877, 0.30, file=False)])
    monkeypatch.setattr(zoo.store, "read_manifest", lambda: {"models": models})
    monkeypatch.setattr(zoo.store, "ZOO_DIR", tmp_path)
    a, b = zoo.natural_twin("cifar10")
    # nearest clean accuracy among the study models with a file and a δ (not the most vulnerable, 39.1%)
    assert a["name"] == "m0.876_0.566" and b["name"] == "m0.866_0.497"
    models.update([entry(0.886, 0.45)])                 # as near as the other: the more vulnerable one wins
    assert zoo.natural_twin("cifar10")[1]["name"] == "m0.886_0.45"
    assert zoo.natural_twin("digits") is None


def test_markdown_states_each_factors_effect_from_the_figures_and_lists_the_gpu_commands():
    rows = [dict(fake("base", 0.55), date="2026-12-05", machine="x86_64 CPU", measure_seconds=300.0,
                 command=study.command("base")),
            dict(fake("ls01", 0.40), clean_top1=0.84, date="2026-12-05", machine="x86_64 CPU", measure_seconds=300.0,
                 command=study.command("ls01"))]
    ref = {"recipe": "--epochs 40", "trained_on": "NVIDIA H200", "clean_top1": 0.876, "alg2_top1": 0.676,
           "fixed_top1": 0.597, "strong_top1": 0.566}
    doc = study.markdown(rows, "Label smoothing did it.", ref, "python bench/vulnerability_study.py --markdown X")
    assert "`ls01` (label smoothing: 0.1): more vulnerable than the base, -15.0 points" in doc
    assert "at -1.0 points of clean accuracy (84.0%)" in doc
    assert "56.6% under the strong attack" in doc and "## The finding\n\nLabel smoothing did it." in doc
    for row, (_, _, where, _) in study.ROWS.items():
        assert (study.command(row) in doc) == (where == "gpu" or row in ("base", "ls01"))


def test_summary_words_follow_the_figures():
    base = dict(fake("base", 0.42), epochs=10)
    worse, better = fake("ls01", 0.30), fake("identity", 0.47)
    harder_ref = {"recipe": "--epochs 40", "trained_on": "NVIDIA H200", "clean_top1": 0.876, "strong_top1": 0.566}
    text = study.summary([base, worse, better], harder_ref)
    assert "keeps only 42.0%" in text and "trained for 10 epochs" in text
    assert "`ls01` (label smoothing: 0.1) made it most vulnerable (30.0%, -12.0 points)" in text
    assert "`identity`" in text and "least (47.0%, +5.0 points)" in text
    assert "the *harder* one to fool" in text
    easier_ref = dict(harder_ref, strong_top1=0.40)
    assert "no harder to fool than the base" in study.summary([base], easier_ref)
    flat = study.summary([base, fake("ls02", 0.425)], None)
    assert "None of the single changes tried made it more vulnerable" in flat
    assert study.summary([worse], None) == ""                                   # no base row: nothing to say


def test_summary_weighs_a_two_factor_row_against_the_row_it_extends():
    base, ls01 = dict(fake("base", 0.42), epochs=10), fake("ls01", 0.39)
    e30, ls01_e30 = dict(fake("e30", 0.51), epochs=30), fake("ls01_e30", 0.45)
    text = study.summary([base, ls01, e30, ls01_e30], None)
    assert "`ls01_e30` adds label smoothing to the `e30` recipe: it keeps 45.0% against 51.0% (-6.0 points)" in text
    assert "moved the 10-epoch base by -3.0 points (`ls01`)" in text
    # a two-factor row is not one of the single changes, even when it is the most vulnerable of them all
    worst = dict(ls01_e30, strong_top1=0.10)
    assert "`ls01` (label smoothing: 0.1) made it most vulnerable" in study.summary([base, ls01, e30, worst], None)
    assert "`ls01_e30` adds" not in study.summary([base, ls01, ls01_e30], None)    # without e30: nothing to weigh


def test_summary_says_whether_a_stronger_dose_of_a_change_did_more():
    base, ls01 = dict(fake("base", 0.42), epochs=10), fake("ls01", 0.39)
    text = study.summary([base, ls01, fake("ls02", 0.404)], None)
    assert "`ls02` takes label smoothing further (0.2 instead of 0.1): it keeps 40.4% against 39.0% (+1.4 points)" \
        in text and "did *not* make the model easier to fool" in text
    assert "made the model easier still to fool" in study.summary([base, ls01, fake("ls02", 0.35)], None)
    assert "changed little" in study.summary([base, ls01, fake("ls02", 0.395)], None)
    assert "takes label smoothing further" not in study.summary([base, fake("ls02", 0.35)], None)   # no ls01


def test_the_report_renders_the_study_section_without_attacking(tmp_path, monkeypatch):
    from uat_core.zoo import report
    src = ROOT / "docs" / "results.json"
    if not src.is_file():
        pytest.skip("no CIFAR-10 report in docs/")
    (tmp_path / "results.json").write_text(src.read_text())
    rows = [dict(fake("base", 0.42), epochs=10), fake("ls01", 0.30)]
    monkeypatch.setattr(study, "load_results", lambda folder=None: rows)

    def refuse(*a, **k):
        raise AssertionError("render-only must not attack")
    monkeypatch.setattr(report.protocol, "attack_run", refuse)
    report.rerender(tmp_path / "results.md")
    md = (tmp_path / "results.md").read_text()
    assert "## What makes a natural model vulnerable (the study)" in md
    assert study.table(rows).splitlines()[2] in md and "keeps only 42.0%" in md

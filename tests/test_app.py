"""The Streamlit demonstrator, page by page, with ``streamlit.testing.v1.AppTest``.

Every page is opened, its widgets set, its Run pressed, and the numbers it shows are compared with the
engine run directly (``uat_core``) on the same settings. Jobs run in "sync" mode here (a session flag:
a job finishes in the script run that starts it), except for the Stop test, which drives the chunked
fragment by hand. AppTest cannot see plotly charts, images or downloads: the figure specs are read
from the element protos, and the download bytes are checked through ``webapp.ui``.
All on the offline digits data: a few seconds per page on 2 CPU cores.
"""
from __future__ import annotations

import io
import json
import math
import pickle
import threading
import time
import tomllib
from pathlib import Path

import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from uat_core.engine.attacks import (AttackConfig, IDeepFool, IDFConfig, StrongConfig, StrongUniversalAttack,
                              UniversalAttack, pattern_bank, score_bank)
from uat_core.engine.data import load_dataset
from uat_core.engine.evaluation import evaluate, predict
from uat_core.zoo import ZOO_DIR, list_models, load_zoo_model, load_zoo_perturbation
from webapp import pages_spec as P
from webapp import settings as S

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"


@pytest.fixture(autouse=True)
def _digits_only(monkeypatch, tmp_path_factory):
    """No CIFAR-10 anywhere: the app must fall back to the digits and say so."""
    monkeypatch.delenv("UAT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
    monkeypatch.setenv("UAT_THREADS", "1")             # the app's torch threads = the reference's


@pytest.fixture(scope="module")
def eng():
    """The engine's view of the same data and model, for reference computations."""
    torch.set_num_threads(1)
    train = load_dataset("digits", "train", progress=False)
    test = load_dataset("digits", "test", progress=False)
    model, _ = load_zoo_model("digits_smallcnn_natural")
    return {"train": train, "test": test, "model": model}


def open_page(page: str, sync: bool = True, params: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=300)
    at.session_state["_uat_sync"] = sync
    for k, v in (params or {}).items():
        at.query_params[k] = v
    at.run()
    if page != "home":
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> float:
    m = next(m for m in at.metric if m.label == label)
    return float(m.value.rstrip("%"))


def latest(at: AppTest, page: str) -> dict:
    return at.session_state["_latest"][page]


def ref_attack(eng, size: int, model=None, **cfg) -> tuple[torch.Tensor, dict]:
    model = model or eng["model"]
    sub = eng["train"].subset(size, seed=cfg.get("seed", 0))
    res = UniversalAttack(model, sub.float_images(), sub.labels, AttackConfig(**cfg)).run()
    return res.delta, evaluate(model, eng["test"].images, eng["test"].labels, res.delta, 10, target=cfg.get("target"))


def ref_strong(eng, size: int, model=None, **cfg):
    """The strong attack run directly: (result, metrics on the test split)."""
    model = model or eng["model"]
    sub = eng["train"].subset(size, seed=cfg.get("seed", 0))
    res = StrongUniversalAttack(model, sub.float_images(), sub.labels, StrongConfig(**cfg)).run()
    return res, evaluate(model, eng["test"].images, eng["test"].labels, res.delta, 10)


def top1(model, test, delta) -> float:
    top, _ = predict(model, test.images, delta, topk=1)
    return (top[:, 0] == test.labels).float().mean().item()


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def no_errors(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


# ---- Home and the default views ----------------------------------------------------------------------

def test_home_says_which_data_and_models_are_in_use():
    at = open_page("home")
    no_errors(at)
    assert at.title[0].value == "UAT Lab"
    assert any("Digits" in w.value and "offline fallback" in w.value for w in at.info)
    table = at.dataframe[0].value
    zoo = {e["algorithm"]: e for e in list_models("digits")}
    assert len(table) == len(zoo)
    nat = table[table["model"] == "natural"].iloc[0]
    assert nat["clean top-1"] == pytest.approx(100 * zoo["natural"]["clean_top1"])
    assert nat["under its own δ"] == pytest.approx(100 * zoo["natural"]["perturbed_top1"])
    # the headline's words are the table's numbers (issue 11: a headline must not claim more than they show)
    head = at.markdown[0].value
    assert f"from {100 * zoo['natural']['clean_top1']:.1f}% right to {100 * zoo['natural']['perturbed_top1']:.1f}%" \
        in head, head
    assert len(at.get("page_link")) == 9
    assert at.selectbox(key="dataset").options == ["digits"]          # the plain name: it is what ?dataset= carries


@pytest.mark.parametrize("page", ["attack_lab", "beta_clipping", "optimizer_race", "uat_training", "idf_vs_alg2",
                                  "data_size", "transfer", "starting_points"])
def test_default_view_shows_a_result_before_any_click(page):
    at = open_page(page)
    no_errors(at)
    assert len(at.metric) > 0 or len(charts(at)) > 0
    jobs = at.session_state["_jobs"] if "_jobs" in at.session_state else {}
    assert jobs == {}                                                                # nothing was computed
    assert not any("No result" in i.value or "No matrix" in i.value for i in at.info)


def test_attack_lab_default_is_the_shipped_precomputed_run():
    from webapp import settings as S
    from webapp.precompute import load_precomputed
    at = open_page("attack_lab")
    entry = {e["algorithm"]: e for e in list_models("digits")}["natural"]
    res = load_precomputed("digits")[S.key("lab", "digits", S.zoo_tag(entry), P.defaults("lab", "digits"))]
    assert metric(at, "Perturbed top-1") == pytest.approx(round(100 * res["metrics"]["perturbed_top1"], 1))
    curve = next(c for c in charts(at) if "minibatch accuracy" in c["layout"]["title"]["text"])
    assert len(curve["data"][0]["x"]) == res["steps"]


# ---- Attack lab ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_attack_lab_run_matches_the_engine_and_caches_by_settings(eng):
    at = open_page("attack_lab")
    at.slider(key="lab_eps").set_value(16)
    at.select_slider(key="lab_beta").set_value(math.inf)
    at.segmented_control(key="lab_opt").set_value("adam")
    at.select_slider(key="lab_size").set_value(100)
    at.slider(key="lab_epochs").set_value(2).run()
    assert any("Press **Run**" in i.value for i in at.info)           # not computed yet: says so
    at.button(key="lab_run").click().run()
    no_errors(at)
    delta, m = ref_attack(eng, 100, eps=16, beta=math.inf, optimizer="adam", epochs=2, seed=0)
    got = latest(at, "lab")["result"]
    assert torch.allclose(got["delta"], delta, atol=1e-6)
    assert metric(at, "Perturbed top-1") == pytest.approx(round(100 * m["perturbed_top1"], 1))
    assert metric(at, "Perturbed top-5") == pytest.approx(round(100 * m["perturbed_top5"], 1))
    assert metric(at, "Fooling ratio") == pytest.approx(round(100 * m["fooling_ratio"], 1))
    assert got["delta"].abs().max().item() <= 16 / 255 + 1e-6
    assert len(got["history"]) == 2 and got["steps"] == 2
    job = at.session_state["_jobs"]["lab"]
    # Another ε: the last run stays on screen, labelled; back to 16: the stored result, no new job.
    at.slider(key="lab_eps").set_value(20).run()
    assert any("Showing your last run" in i.value for i in at.info)
    at.slider(key="lab_eps").set_value(16).run()
    assert not any("Showing" in i.value for i in at.info)
    assert at.session_state["_jobs"]["lab"] is job
    assert metric(at, "Perturbed top-1") == pytest.approx(round(100 * m["perturbed_top1"], 1))


@pytest.mark.slow
def test_attack_lab_strong_switch_matches_the_engine_and_shows_the_baseline(eng):
    at = open_page("attack_lab")
    at.select_slider(key="lab_size").set_value(100)
    at.slider(key="lab_epochs").set_value(2)
    at.toggle(key="lab_strong").set_value(True).run()
    at.button(key="lab_run").click().run()
    no_errors(at)
    got = latest(at, "lab")["result"]
    res, m = ref_strong(eng, 100, eps=32, beta=9.0, optimizer="pgd", epochs=2, seed=0, batch_size=128,
                        snapshot_every=1)
    assert torch.allclose(got["delta"], res.delta, atol=1e-6)
    assert got["attack"] == "strong" and got["config"]["start"] == res.config["start"]
    assert metric(at, "Perturbed top-1") == pytest.approx(round(100 * m["perturbed_top1"], 1))
    fixed = top1(eng["model"], eng["test"], res.best_fixed)
    assert metric(at, "Best fixed pattern (baseline)") == pytest.approx(round(100 * fixed, 1))
    assert got["fixed"]["name"] == res.config["best_fixed"]["name"]
    # plain Alg. 2 shows the baseline too (screened separately on the same attack images)
    at.toggle(key="lab_strong").set_value(False).run()
    at.button(key="lab_run").click().run()
    no_errors(at)
    assert latest(at, "lab")["result"]["attack"] == "alg2"
    assert any(mm.label == "Best fixed pattern (baseline)" for mm in at.metric)


def test_starting_points_page_scores_the_bank_like_the_engine(eng):
    at = open_page("starting_points")
    at.slider(key="bank_eps").set_value(24).run()
    at.button(key="bank_run").click().run()
    no_errors(at)
    got = latest(at, "bank")["result"]
    bank = pattern_bank((1, 32, 32), 24 / 255, random=4)
    assert got["complete"] and len(got["names"]) == len(bank) and got["n"] == P.defaults("bank", "digits")["test_size"]
    assert got["accs"] == sorted(got["accs"])                           # strongest first
    test = eng["test"].subset(got["n"], 0)                             # the page's fixed stratified subset
    top = [bank.names.index(n) for n in got["names"][:10]]              # the reference for the ten shown first
    sc = score_bank(eng["model"], bank.patterns[top], test.images, test.labels, 9.0)
    for acc, ref in zip(got["accs"][:10], sc.acc.tolist()):
        assert acc == pytest.approx(ref, abs=1e-6)
    assert metric(at, "Test accuracy under it") == pytest.approx(round(100 * got["accs"][0], 1))
    at.slider(key="bank_rank").set_value(5).run()
    assert metric(at, "Test accuracy under it") == pytest.approx(round(100 * got["accs"][4], 1))


def test_starting_points_table_compares_the_shipped_delta_on_the_same_images(eng):
    """The bank's best is picked on the page's own test images, so the shipped δ is scored on them too."""
    at = open_page("starting_points")
    no_errors(at)
    table = at.dataframe[0].value.set_index("what")["accuracy (%)"]
    n = P.defaults("bank", "digits")["test_size"]
    test = eng["test"].subset(n, 0)
    delta = load_zoo_perturbation("digits_smallcnn_natural")
    ref = 100 * evaluate(eng["model"], test.images, test.labels, delta)["perturbed_top1"]
    row = next(k for k in table.index if k.startswith("the shipped δ") and f"these {n} test images" in k)
    assert table[row] == pytest.approx(ref, abs=1e-6)
    assert any(k.startswith("the baseline: best fixed pattern picked on training images") for k in table.index)


@pytest.mark.slow
def test_attack_lab_targeted_run_reports_the_target_rate(eng):
    at = open_page("attack_lab")
    at.select_slider(key="lab_size").set_value(100)
    at.slider(key="lab_epochs").set_value(1)
    at.selectbox(key="lab_target").set_value(3).run()
    at.button(key="lab_run").click().run()
    no_errors(at)
    _, m = ref_attack(eng, 100, eps=32, beta=9.0, optimizer="pgd", epochs=1, seed=0, target=3)
    assert metric(at, "Target rate") == pytest.approx(round(100 * m["target_rate"], 1))


@pytest.mark.slow
def test_attack_lab_l2_with_a_chosen_step_size(eng):
    at = open_page("attack_lab")
    at.radio(key="lab_norm").set_value("l2").run()
    at.slider(key="lab_eps2").set_value(200)
    at.segmented_control(key="lab_opt").set_value("sgd")
    at.number_input(key="lab_step").set_value(20000.0)
    at.select_slider(key="lab_size").set_value(100)
    at.slider(key="lab_epochs").set_value(2).run()
    at.button(key="lab_run").click().run()
    no_errors(at)
    delta, m = ref_attack(eng, 100, eps=200, norm="l2", optimizer="sgd", step_size=20000.0, epochs=2, seed=0)
    got = latest(at, "lab")["result"]["delta"]
    assert torch.allclose(got, delta, atol=1e-6)
    assert got.norm().item() <= 200 / 255 + 1e-4
    assert metric(at, "Perturbed top-1") == pytest.approx(round(100 * m["perturbed_top1"], 1))


@pytest.mark.slow
def test_stop_ends_the_run_and_keeps_the_partial_result():
    at = open_page("attack_lab", sync=False)
    at.select_slider(key="lab_size").set_value(1297)
    at.slider(key="lab_epochs").set_value(20).run()
    at.button(key="lab_run").click().run()               # the job gets the slot; the scheduler's worker computes
    job = at.session_state["_jobs"]["lab"]
    deadline = time.time() + 30
    while not job.state["history"] and time.time() < deadline:
        time.sleep(0.05)
    assert not job.done and 0 < len(job.state["history"]) < 220
    assert at.button(key="lab_run").disabled and not at.button(key="lab_stop").disabled
    at.button(key="lab_stop").click().run()
    while not job.done and time.time() < deadline + 30:
        time.sleep(0.05)
    at.run()
    no_errors(at)
    assert job.done and job.result["stopped"] and job.result["steps"] < 220
    assert any("stopped after" in w.value for w in at.warning)
    assert not at.button(key="lab_run").disabled


def test_shared_link_reproduces_the_settings():
    at = open_page("home", params={"lab_eps": "16", "lab_opt": "ADAM", "lab_model": "uFGSM (Alg. 3)",
                                           "lab_epochs": "7", "lab_beta": "∞"})
    at.switch_page("pages/attack_lab.py").run()
    assert at.slider(key="lab_eps").value == 16
    assert at.segmented_control(key="lab_opt").value == "adam"
    assert at.selectbox(key="lab_model").value == "uat"
    assert at.slider(key="lab_epochs").value == 7
    assert at.select_slider(key="lab_beta").value == math.inf


@pytest.mark.parametrize("ds", ["digits", "cifar10"])
def test_a_dataset_link_opens_that_dataset(ds, monkeypatch):
    """?dataset=digits (or cifar10) opens that dataset, also when the other one is the default."""
    from conftest import CIFAR_ROOT
    from webapp.state.data import available_datasets, default_dataset
    if not CIFAR_ROOT.is_dir():
        pytest.skip("needs the CIFAR-10 copy (both datasets offered)")
    monkeypatch.setenv("UAT_DATA", str(CIFAR_ROOT))
    assert available_datasets() == ["cifar10", "digits"]
    at = open_page("home", params={"dataset": ds})
    assert at.selectbox(key="dataset").value == ds
    at.switch_page("pages/attack_lab.py").run()
    assert at.session_state["dataset"] == ds and not at.exception
    if ds != default_dataset():
        assert open_page("home").selectbox(key="dataset").value == default_dataset()   # no link: the default


def test_settings_survive_a_page_switch():
    at = open_page("attack_lab")
    at.slider(key="lab_eps").set_value(12).run()
    at.switch_page("pages/transfer.py").run()
    at.switch_page("pages/attack_lab.py").run()
    assert at.slider(key="lab_eps").value == 12


# ---- uploads -------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling this would create a file: an uploaded checkpoint must never be unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.selectbox(key="lab_model").set_value("upload").run()
    at.get("file_uploader")[0].set_value((name, data, "application/octet-stream")).run()
    assert not at.exception, at.exception
    return at


def test_upload_of_a_foreign_or_malicious_file_gets_a_message(tmp_path):
    at = open_page("attack_lab")
    _upload(at, "junk.pt", b"this is not a checkpoint")
    assert any("can't be used" in e.value and "not a readable UAT Lab checkpoint" in e.value for e in at.error)
    sentinel = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"format": "uat-lab/model", "meta": _Payload(sentinel), "state_dict": {}}, buf)
    _upload(at, "evil.pt", buf.getvalue())
    assert not sentinel.exists()
    assert any("can't be used" in e.value for e in at.error)
    _upload(at, "plain.pt", pickle.dumps(_Payload(sentinel)))          # a bare pickle
    assert not sentinel.exists()
    assert at.button(key="lab_run").disabled


def test_upload_of_a_model_for_another_dataset_is_refused(tmp_path):
    from uat_core.engine.checkpoint import model_meta, save_checkpoint
    from uat_core.engine.models import build_model
    model = build_model("resnet20", 10, 3, (0.5,) * 3, (0.25,) * 3)
    path = save_checkpoint(tmp_path / "cifar.pt", model, model_meta("resnet20", "cifar10", [str(i) for i in range(10)],
                                                                    3, 32, (0.5,) * 3, (0.25,) * 3))
    at = _upload(open_page("attack_lab"), "cifar.pt", path.read_bytes())
    assert any("3-channel" in e.value and "digits" in e.value for e in at.error)


@pytest.mark.slow
def test_uploaded_checkpoint_is_the_model_attacked(eng):
    data = (ZOO_DIR / "digits_smallcnn_uat.pt").read_bytes()
    at = _upload(open_page("attack_lab"), "mine.pt", data)
    no_errors(at)
    at.select_slider(key="lab_size").set_value(100)
    at.slider(key="lab_epochs").set_value(1).run()
    at.button(key="lab_run").click().run()
    no_errors(at)
    model, _ = load_zoo_model("digits_smallcnn_uat")
    _, m = ref_attack(eng, 100, model=model, eps=32, beta=9.0, optimizer="pgd", epochs=1, seed=0)
    assert metric(at, "Clean top-1") == pytest.approx(round(100 * m["clean_top1"], 1))
    assert metric(at, "Perturbed top-1") == pytest.approx(round(100 * m["perturbed_top1"], 1))
    assert latest(at, "lab")["key"].split("|")[2].startswith("upload:")


def test_an_upload_naming_a_huge_architecture_is_refused_without_building_it(monkeypatch):
    """A 1 KB file that names a large model: refused from its metadata; the refusal is cached per file hash."""
    from uat_core.engine import checkpoint
    built, reads = [], []
    real_build, real_read = checkpoint.build_model, checkpoint.read_checkpoint
    monkeypatch.setattr(checkpoint, "build_model",
                        lambda *a, **k: built.append(torch.empty(0).device.type) or real_build(*a, **k))
    monkeypatch.setattr(checkpoint, "read_checkpoint", lambda p: reads.append(p) or real_read(p))
    buf = io.BytesIO()
    meta = {"arch": "wrn32_10", "dataset": "digits", "classes": [str(i) for i in range(10)], "num_classes": 10,
            "in_channels": 1, "image_size": 32, "mean": [0.5], "std": [0.25]}
    torch.save({"format": "uat-lab/model", "version": 1, "meta": meta, "state_dict": {}}, buf)
    at = open_page("attack_lab")
    _upload(at, "tiny.pt", buf.getvalue())
    assert any("weights do not fit a wrn32_10" in e.value for e in at.error), [e.value for e in at.error]
    assert built == ["meta"]                            # only the shape-only shell on the meta device
    n = len(reads)
    at.run()                                            # a rerun with the same file: the cached refusal
    assert len(reads) == n and any("weights do not fit" in e.value for e in at.error)


def test_metadata_and_parameter_cap_are_checked_before_any_model_is_built():
    from uat_core.engine.checkpoint import check_meta, check_weights_fit
    from uat_core.engine.errors import UATError
    ok = {"arch": "smallcnn", "dataset": "digits", "num_classes": 10, "in_channels": 1, "image_size": 32,
          "mean": [0.5], "std": [0.25], "classes": [str(i) for i in range(10)]}
    assert check_meta(dict(ok)) == ok
    for bad, word in (({"num_classes": "10"}, "num_classes"), ({"in_channels": 0}, "in_channels"),
                      ({"image_size": 10 ** 6}, "image_size"), ({"mean": [0.5, 0.5]}, "mean"),
                      ({"std": [0.0]}, "std"), ({"classes": ["a"]}, "classes"), ({"arch": "vgg"}, "unknown model"),
                      ({"arch": ["smallcnn"]}, "arch")):
        with pytest.raises(UATError, match=word):
            check_meta({**ok, **bad})
    big = {**ok, "arch": "wrn32_10", "in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.raises(UATError, match=r"46\.\d M parameters; at most 10 M"):
        check_weights_fit(big, {}, max_params=10_000_000)


def test_upload_cap_is_configured():
    from webapp.state.uploads import MAX_UPLOAD_MB
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["maxUploadSize"] == MAX_UPLOAD_MB <= 50


# ---- the experiment pages ------------------------------------------------------------------------------

@pytest.mark.slow
def test_beta_page_matches_the_engine(eng):
    at = open_page("beta_clipping")
    at.multiselect(key="beta_betas").set_value([1.0, math.inf])
    at.slider(key="beta_repeats").set_value(1)
    at.select_slider(key="beta_size").set_value(100)
    at.slider(key="beta_epochs").set_value(1).run()
    at.button(key="beta_run").click().run()
    no_errors(at)
    table = at.dataframe[0].value
    assert list(table["β"]) == ["1", "∞"]
    for beta, shown in zip([1.0, math.inf], table["accuracy under attack (%)"]):
        _, m = ref_attack(eng, 100, eps=32, beta=beta, optimizer="pgd", epochs=1, seed=0)
        assert shown == pytest.approx(100 * m["perturbed_top1"], abs=1e-4)
    sweep = next(c for c in charts(at) if c["layout"]["xaxis"]["title"]["text"].startswith("β"))
    assert sweep["data"][0]["x"] == ["1", "∞"]
    # the page says in words which way its own numbers go (one subset per β: no spread, so any gap counts)
    acc = dict(zip(table["β"], table["accuracy under attack (%)"]))
    verdict = [m.value for m in list(at.info) + list(at.success) if "lipping" in m.value]
    assert len(verdict) == 1
    assert ("Clipping helps here" in verdict[0]) == (acc["1"] < acc["∞"]), (acc, verdict)


@pytest.mark.slow
def test_optimizer_race_matches_the_engine(eng):
    at = open_page("optimizer_race")
    at.slider(key="race_epochs").set_value(1)
    at.select_slider(key="race_size").set_value(100).run()
    at.button(key="race_run").click().run()
    no_errors(at)
    for opt, label in [("sgd", "SGD"), ("msgd", "MSGD"), ("adam", "ADAM"), ("pgd", "PGD (sign)")]:
        _, m = ref_attack(eng, 100, eps=32, beta=9.0, optimizer=opt, epochs=1, seed=0)
        assert metric(at, label) == pytest.approx(round(100 * m["perturbed_top1"], 1)), opt
    race = next(c for c in charts(at) if "Optimizer race" in c["layout"]["title"]["text"])
    assert sorted(t["name"] for t in race["data"]) == ["ADAM", "MSGD", "PGD", "SGD"]


@pytest.mark.slow
def test_idf_page_matches_the_engine(eng):
    at = open_page("idf_vs_alg2")
    at.select_slider(key="idf_size").set_value(32)
    at.slider(key="idf_passes").set_value(1)
    at.slider(key="idf_epochs").set_value(1).run()
    at.button(key="idf_run").click().run()
    no_errors(at)
    sub = eng["train"].subset(32, seed=0)
    res = IDeepFool(eng["model"], sub.float_images(), sub.labels,
                    IDFConfig(eps=32, max_passes=1, xi=1.0, batch_size=8)).run()
    assert metric(at, "iDeepFool: accuracy") == pytest.approx(
        round(100 * top1(eng["model"], eng["test"], res.delta), 1))
    _, m = ref_attack(eng, 32, eps=32, beta=9.0, optimizer="pgd", epochs=1, seed=0)
    assert metric(at, "Alg. 2: accuracy") == pytest.approx(round(100 * m["perturbed_top1"], 1))
    assert metric(at, "iDeepFool: seconds") > 0


@pytest.mark.slow
def test_data_size_page_matches_the_engine(eng):
    at = open_page("data_size")
    at.multiselect(key="size_sizes").set_value([25, 50])
    at.slider(key="size_repeats").set_value(1)
    at.slider(key="size_steps").set_value(5).run()
    at.button(key="size_run").click().run()
    no_errors(at)
    table = at.dataframe[0].value
    assert list(table["n (training images)"]) == [25, 50]
    for n, shown in zip([25, 50], table["accuracy under attack (%)"]):
        _, m = ref_attack(eng, n, eps=32, beta=9.0, optimizer="pgd", epochs=5, seed=0)   # 1 step/epoch: 5 steps
        assert shown == pytest.approx(100 * m["perturbed_top1"], abs=1e-4)


@pytest.mark.slow
def test_training_page_trains_attacks_and_shares_models_with_the_session(eng):
    from uat_core.recipes.pipeline import make_trainer
    from uat_core.engine.training import TrainConfig
    at = open_page("uat_training")
    at.multiselect(key="uat_algos").set_value(["natural", "lowcost", "lowcost_pool"])
    at.slider(key="uat_epochs").set_value(1)
    at.select_slider(key="uat_size").set_value(250)
    at.select_slider(key="uat_asize").set_value(100)
    at.slider(key="uat_aepochs").set_value(1).run()
    at.button(key="uat_run").click().run()
    no_errors(at)
    rows = {r["algorithm"]: r for r in latest(at, "uat")["result"]["rows"]}
    assert set(rows) == {"natural", "lowcost", "lowcost_pool"}
    data = eng["train"].subset(250, seed=0)
    for algo in ("natural", "lowcost", "lowcost_pool"):
        base, extra = ("lowcost", dict(delta_pool=4, bank_share=0.25)) if algo == "lowcost_pool" else (algo, {})
        cfg = TrainConfig(algorithm=base, epochs=1, eps=32, delta_rule="fgsm", seed=0, snapshot_every=5, track_every=5,
                          lr=0.05, flip=False, augment=False, batch_size=64, **extra)      # digits' defaults
        res = make_trainer("smallcnn", data, cfg).run()
        strong, m = ref_strong(eng, 100, model=res.model, eps=32, beta=9.0, epochs=1, seed=0, snapshot_every=0)
        assert rows[algo]["clean_top1"] == pytest.approx(m["clean_top1"], abs=1e-6), algo
        assert rows[algo]["robust_top1"] == pytest.approx(m["perturbed_top1"], abs=1e-6), algo
        assert rows[algo]["fixed_top1"] == pytest.approx(top1(res.model, eng["test"], strong.best_fixed), abs=1e-6)
        shown = {"natural": "natural", "lowcost": "low-cost", "lowcost_pool": "low-cost pool"}[algo]
        assert metric(at, shown) == pytest.approx(round(100 * m["perturbed_top1"], 1))
    # Low-cost UAT costs what natural training costs: one forward and one backward per step.
    assert rows["lowcost"]["forward"] == rows["natural"]["forward"] == rows["lowcost"]["backward"]
    assert rows["lowcost_pool"]["forward"] == rows["lowcost"]["forward"]        # the pool costs no passes
    at.switch_page("pages/attack_lab.py").run()            # the trained models are offered for this session
    assert sum("(trained here)" in o for o in at.selectbox(key="lab_model").options) == 3


@pytest.mark.slow
def test_transfer_page_matches_the_engine(eng):
    at = open_page("transfer")
    at.multiselect(key="transfer_models").set_value(["natural", "uat"]).run()
    assert at.toggle(key="transfer_extra").disabled                  # no attack-lab run in this session yet
    at.button(key="transfer_run").click().run()
    no_errors(at)
    res = latest(at, "transfer")["result"]
    assert res["sources"] == res["targets"] == ["natural", "uFGSM"]
    models = {n: load_zoo_model(f"digits_smallcnn_{a}")[0] for n, a in (("natural", "natural"), ("uFGSM", "uat"))}
    deltas = {n: load_zoo_perturbation(f"digits_smallcnn_{a}") for n, a in (("natural", "natural"), ("uFGSM", "uat"))}
    test = eng["test"]
    for i, s in enumerate(res["sources"]):
        for j, t in enumerate(res["targets"]):
            assert res["matrix"][i][j] == pytest.approx(top1(models[t], test, deltas[s]), abs=1e-6)
    heat = next(c for c in charts(at) if c["data"][0]["type"] == "heatmap")
    assert heat["data"][0]["x"] == ["natural", "uFGSM"]


# ---- what AppTest cannot see: pictures and downloads -----------------------------------------------------

def test_downloads_hold_the_perturbation(eng):
    from uat_core.engine.export import comparison_grid
    from webapp.ui import _files
    delta, m = ref_attack(eng, 100, eps=32, beta=9.0, optimizer="pgd", epochs=1, seed=0)
    snaps = [(1, delta * 0.5), (2, delta)]
    result = {"delta": delta, "snapshots": snaps, "metrics": m, "seconds": 1.0, "steps": 2, "stopped": False,
              "config": {"eps": 32}}
    key = 'lab|digits|zoo:x|{"eps": 32}'
    f = _files(key, id(result), result, 32 / 255, {"eps": 32})
    png = Image.open(io.BytesIO(f["png"]))
    assert png.format == "PNG" and png.size == (256, 256)
    gif = Image.open(io.BytesIO(f["gif"]))
    assert gif.format == "GIF" and gif.n_frames == 2
    import numpy as np
    assert np.array_equal(np.load(io.BytesIO(f["npy"])), delta.numpy())
    assert torch.equal(torch.load(io.BytesIO(f["pt"]), weights_only=True), delta)
    meta = json.loads(f["json"])
    assert meta["metrics"]["perturbed_top1"] == pytest.approx(m["perturbed_top1"])
    assert meta["settings"] == {"eps": 32}
    test = eng["test"]
    grid = comparison_grid(test.float_images(slice(0, 16)), delta, test.classes, [0] * 16, [1] * 16, test.labels[:16])
    assert grid.size[0] == 8 * (32 * 3 + 4)


# ---- the Streamlit-free pieces ------------------------------------------------------------------------------

def test_job_advances_in_slices_stops_cleanly_and_reports_user_errors(eng):
    from uat_core.engine.errors import UATError
    from uat_core.recipes.experiments import attack as attack_job
    from webapp.jobs import Job
    done = []
    job = Job("t", attack_job, eng["model"], eng["train"].subset(256, seed=0), eng["test"],
              {"eps": 32, "epochs": 3, "seed": 0}, on_done=done.append)
    assert job.pump(0) == 1 and not job.done and len(job.state["history"]) == 1   # one engine step per slice
    job.pump(0)
    job.stop()
    job.finish()
    assert job.done and job.result["stopped"] and job.result["steps"] == 2     # no step after the stop
    assert done == [job] and job.compute_seconds > 0
    assert job.result["metrics"]["n"] == len(eng["test"])        # the partial δ is still measured

    def broken(job):
        yield
        raise UATError("the gradient became NaN")

    bad = Job("b", broken, on_done=done.append)
    bad.finish()
    assert bad.done and bad.error == "the gradient became NaN" and bad.result is None and done == [job]


def test_settings_keys_name_exactly_one_result():
    from webapp import settings as S
    d = P.defaults("lab", "digits")
    assert S.key("lab", "digits", "zoo:a:1", d) == S.key("lab", "digits", "zoo:a:1", dict(reversed(list(d.items()))))
    assert S.key("lab", "digits", "zoo:a:1", d) != S.key("lab", "digits", "zoo:a:1", {**d, "eps": 16})
    assert S.key("lab", "digits", "zoo:a:1", d) != S.key("lab", "digits", "zoo:a:2", d)
    inf = S.key("lab", "digits", "t", {**d, "beta": math.inf})
    assert S.settings_of(inf)["beta"] == "inf"
    assert P.defaults("lab", "digits")["eps"] == 32 and P.defaults("lab", "cifar10")["eps"] == 8


def test_every_page_is_one_spec():
    """Each page is described once (webapp/pages_spec.py): its file in pages/ goes by the spec's id, a page that
    runs something has its defaults, experiment and cost, and the precompute script ships every such page."""
    from webapp import precompute
    from webapp.pages_spec import PAGES
    assert {p.file for p in PAGES.values()} == {f.name for f in (ROOT / "pages").glob("*.py")}
    for p in PAGES.values():
        parts = (p.defaults, p.experiment, p.cost, p.ship)
        assert all(x is not None for x in parts) or all(x is None for x in parts), p.id
        if p.defaults is not None:
            assert f'PAGE = "{p.id}"' in (ROOT / p.path).read_text(), p.id
            for ds in S.DATASETS:
                assert P.defaults(p.id, ds) == dict(p.defaults(ds)) and P.defaults(p.id, ds)["test_size"] > 0
    assert set(precompute.PAGES) == {p.id for p in PAGES.values() if p.ship is not None}


# ---------------------------------------------------------------------------------------------
# cost budgets (webapp/budget.py)
# ---------------------------------------------------------------------------------------------

def test_every_pages_defaults_fit_the_budget_and_the_issues_example_does_not():
    from webapp.pages_spec import PAGES
    sizes = {"digits": (1297, 500), "cifar10": (50_000, 1_000)}
    runs = [p.id for p in PAGES.values() if p.cost is not None]
    assert set(runs) == {"lab", "beta", "size", "race", "idf", "uat", "transfer", "bank"}
    for ds, (n_train, n_test) in sizes.items():
        for page in runs:
            est = P.estimate(page, P.defaults(page, ds), ds, n_train, n_test, n_models=5, n_deltas=6,
                                  n_patterns=300)
            assert est.allowed and est.passes > 0, (page, ds, est.message)
    huge = {**P.defaults("uat", "cifar10"), "algorithms": ["natural", "uat", "lowcost", "uat_pool", "lowcost_pool"],
            "epochs": 10, "train_size": 50_000}
    est = P.estimate("uat", huge, "cifar10", 50_000, 1_000)
    assert not est.allowed and "Too large" in est.message and "fewer epochs" in est.message
    # the cost grows with the work asked for
    one = P.passes("lab", P.defaults("lab", "digits"), 1297, 500, channels=1)
    assert P.passes("lab", {**P.defaults("lab", "digits"), "epochs": 10}, 1297, 500, channels=1) > one
    assert P.passes("lab", {**P.defaults("lab", "digits"), "strong": True}, 1297, 500, channels=1) > 2 * one


def test_the_budget_scale_moves_the_cap(monkeypatch):
    from webapp import budget
    monkeypatch.setenv("UAT_BUDGET_SCALE", "20")
    assert budget.cap("cifar10") == 20 * budget.CAPS["cifar10"]
    monkeypatch.setenv("UAT_BUDGET_SCALE", "not a number")
    assert budget.cap("cifar10") == budget.CAPS["cifar10"]


@pytest.mark.parametrize("page,settings", [
    ("lab", {"epochs": 2, "attack_size": 100}),
    ("lab", {"epochs": 2, "attack_size": 100, "strong": True}),
    ("race", {"epochs": 1, "attack_size": 100}),
    ("beta", {"betas": [3.0, 9.0], "repeats": 1, "attack_size": 100, "epochs": 2}),
    ("size", {"sizes": [50, 200], "repeats": 1, "steps": 4}),
    ("bank", {}),
    ("uat", {"algorithms": ["natural", "uat"], "epochs": 1, "train_size": 250, "attack_size": 100,
             "attack_epochs": 1}),
])
def test_the_estimate_is_within_a_factor_of_two_of_the_images_the_engine_runs(page, settings):
    """Count every image the models see (a forward hook; a forward under no_grad counts a third) and
    compare with the estimate, so the cap refuses what it should and nothing else."""
    from uat_core import zoo
    from uat_core.engine.models import Normalized
    from webapp import budget
    from webapp.pages_spec import page_job
    s = {**P.defaults(page, "digits"), "test_size": 100, **settings}
    train = load_dataset("digits", "train", progress=False)
    test = load_dataset("digits", "test", limit=100, progress=False)
    seen = [0.0]

    def hook(module, inputs, output):                 # every model the job builds or uses, top level only
        if isinstance(module, Normalized):
            seen[0] += inputs[0].shape[0] * (1.0 if torch.is_grad_enabled() else budget.EVAL)

    model, _ = zoo.load_zoo_model("digits_smallcnn_natural")
    job = page_job(page, s, train, test, model=model, arch="smallcnn")
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        job.finish()
    finally:
        handle.remove()
    assert job.error is None
    est = P.passes(page, s, len(train), len(test), channels=1)
    assert seen[0] > 0 and 0.5 <= est / seen[0] <= 2.0, (est, seen[0])


def test_settings_over_the_cap_disable_run_and_say_why(monkeypatch):
    monkeypatch.setenv("UAT_BUDGET_SCALE", "1e-9")
    at = open_page("attack_lab")
    run = next(b for b in at.button if b.key == "lab_run")
    assert run.disabled
    assert any("Too large for this shared server" in w.value for w in at.sidebar.warning)
    monkeypatch.setenv("UAT_BUDGET_SCALE", "1")
    at = open_page("attack_lab")
    assert not next(b for b in at.button if b.key == "lab_run").disabled
    assert any("Estimated cost" in c.value for c in at.sidebar.caption)


def test_the_single_streamlit_shim_matches_the_streamlit_it_runs_on():
    """webapp/boot.py copies, early, what st.navigation's first call does. If a Streamlit release renames the
    attribute or stops setting it, deep links to a fresh server would break silently: fail here instead."""
    import inspect
    import re

    import streamlit
    from packaging.specifiers import SpecifierSet
    from streamlit.commands import navigation
    from streamlit.runtime.pages_manager import PagesManager

    assert "uses_pages_directory" in vars(PagesManager), "PagesManager.uses_pages_directory is gone"
    assert "PagesManager.uses_pages_directory = False" in inspect.getsource(navigation.navigation), \
        "st.navigation no longer sets PagesManager.uses_pages_directory = False: revisit webapp/boot.py"
    req = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text()
    spec = SpecifierSet(re.search(r"^streamlit([<>=!,.\d]+)", req, re.M).group(1))
    assert "<" in str(spec), "requirements.txt must cap Streamlit at the versions this test has covered"
    assert streamlit.__version__ in spec, f"Streamlit {streamlit.__version__} is outside {spec}"


def test_streamlit_does_not_collect_garbage_after_every_run():
    """Streamlit's default full gc.collect(2) after each script run (fragment runs included) took most of the
    server's time with nine visitors (py-spy); .streamlit/config.toml turns it off."""
    cfg = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())
    assert cfg["runner"]["postScriptGC"] is False


def _widgets(at: AppTest) -> dict:
    """{key: value} of the page's keyed settings widgets."""
    return {w.key: w.value for kind in ("slider", "select_slider", "selectbox", "segmented_control", "toggle",
                                        "checkbox", "multiselect", "pills")
            for w in at.get(kind) if getattr(w, "key", None) and not w.key.startswith("_")}


# (transfer's one setting, whether to add the attack lab's δ, needs a lab run in the same session: not a link)
@pytest.mark.parametrize("page", ["attack_lab", "beta_clipping", "optimizer_race", "uat_training", "idf_vs_alg2",
                                  "data_size", "starting_points"])
def test_every_pages_settings_round_trip_through_its_url(page):
    """A link that sets two of the page's sliders (to their maximum) opens the page with exactly those settings,
    every other setting at its default, and the link's parameters still in the URL after the run."""
    base = open_page(page)
    defaults = _widgets(base)
    sliders = [w for w in base.get("slider") if getattr(w, "key", None) and not w.key.startswith("_")
               and isinstance(w.value, (int, float)) and w.value != w.max][:2]
    assert sliders, f"{page} has no slider to put in a link"
    params = {w.key: str(w.max) for w in sliders}
    at = open_page(page, params=params)
    assert _widgets(at) == {**defaults, **{w.key: w.max for w in sliders}}
    kept = {k: at.query_params.get(k) for k in params}
    kept = {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in kept.items()}   # older AppTest: lists
    assert kept == params


def test_vulnerability_page_draws_the_study_and_says_the_side_by_side_needs_cifar10():
    """The study's rows (docs/study) as a chart and a table with the same figures; on digits, the two-model
    comparison says it needs CIFAR-10 instead of failing."""
    from uat_core.recipes import study
    at = open_page("vulnerability")
    no_errors(at)
    rows = study.load_results()
    if rows:
        spec = charts(at)[0]
        strong = next(t for t in spec["data"] if t["name"] == "strong attack")
        assert strong["x"] == pytest.approx([100 * r["strong_top1"] for r in rows])
        table = at.dataframe[0].value
        assert list(table["row"]) == [r["row"] for r in rows]
        assert list(table["strong attack"]) == pytest.approx([100 * r["strong_top1"] for r in rows])
    else:
        assert any("No study rows" in i.value for i in at.info)
    assert any("CIFAR-10 classifiers" in i.value for i in at.info)


# ---- getting CIFAR-10 from the sidebar -----------------------------------------------------------------

def _dataset_sidebar():
    """app.py's dataset box and what sits under it, as a script of its own: AppTest reruns a multipage app's
    page without app.py (webapp/boot.py says why), so a click in app.py's own sidebar is tested here."""
    import streamlit as st

    from webapp import cifar
    from webapp.state import data
    with st.sidebar:
        options = data.available_datasets()
        st.selectbox("Dataset", options, key="dataset")
        cifar.offer(options)


def _press_download(at: AppTest, until, click: bool = True) -> AppTest:
    """Press the download button, then rerun until ``until(at)`` (a download in a thread ends a little later)."""
    if click:
        at.button(key="cifar10_download").click().run()
    for _ in range(200):
        if until(at) or at.exception:
            break
        time.sleep(0.05)
        at.run()
    assert not at.exception, at.exception
    return at


def test_home_sidebar_offers_the_cifar10_download_with_its_size_without_cifar10():
    at = open_page("home")
    no_errors(at)
    button = at.sidebar.button(key="cifar10_download")
    assert button.label == "Download CIFAR-10 (170 MB)"
    assert "170,498,071 bytes" in button.help and "163 MiB" in button.help
    assert any("digits only" in c.value for c in at.sidebar.caption)
    assert any("Download CIFAR-10" in c.value for c in at.main.caption)       # the home page points to it


@pytest.mark.parametrize("sync", [True, False], ids=["in-the-run", "in-a-thread"])
def test_the_download_button_without_a_network_says_so_in_one_line(sync, tmp_path, monkeypatch):
    import socket
    import urllib.error

    from uat_core.engine import download as D

    def offline(url, timeout):                  # what urllib raises on a machine without a network
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(D, "_open_url", offline)
    at = AppTest.from_function(_dataset_sidebar, default_timeout=60)
    at.session_state["_uat_sync"] = sync
    at.run()
    _press_download(at, lambda at: len(at.error) > 0)
    assert len(at.error) == 1, [e.value for e in at.error]
    msg = at.error[0].value
    assert msg == ("cannot download CIFAR-10 from www.cs.toronto.edu (Name or service not known): check the network "
                   "connection, or set UAT_DATA to a CIFAR-10 copy"), msg
    assert "\n" not in msg and "Traceback" not in msg
    assert at.selectbox(key="dataset").options == ["digits"]
    assert at.button(key="cifar10_download").label == "Download CIFAR-10 (170 MB)"      # offered again
    assert not (tmp_path / "cache" / "uat_lab" / "cifar10").exists()


@pytest.mark.parametrize("sync", [True, False], ids=["in-the-run", "in-a-thread"])
def test_a_download_from_the_sidebar_makes_cifar10_selectable(sync, tmp_path, monkeypatch):
    """A (faked: a tiny archive through file://) download fills the bar and puts cifar10 in the dataset box, in
    the folder the command line uses, without a restart."""
    from conftest import fake_cifar10_archive
    from uat_core.engine import download as D
    from webapp import cifar
    from webapp.state.data import available_datasets

    archive, md5, _ = fake_cifar10_archive(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(D, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(D, "CIFAR10_MD5", D._md5(archive))
    monkeypatch.setattr(D, "CHUNK_BYTES", 4096)
    bar: list[float] = []
    original = cifar.Download.progress

    def spy(self, done, total):
        original(self, done, total)
        bar.append(self.fraction())
    monkeypatch.setattr(cifar.Download, "progress", spy)

    gate = threading.Event()                    # in a thread: the first bytes wait until the bar has been seen
    if not sync:
        fetch = D._open_url

        def gated(url, timeout):
            response = fetch(url, timeout)
            read = response.read

            def slow_read(n=-1):
                assert gate.wait(30)
                return read(n)
            response.read = slow_read
            return response
        monkeypatch.setattr(D, "_open_url", gated)

    at = AppTest.from_function(_dataset_sidebar, default_timeout=60)
    at.session_state["_uat_sync"] = sync
    at.run()
    assert at.selectbox(key="dataset").options == ["digits"]
    if not sync:
        at.button(key="cifar10_download").click().run()
        assert any("download goes on" in c.value for c in at.sidebar.caption), "no live bar"
        assert not at.button                    # no second download while one runs
        gate.set()
    _press_download(at, lambda at: len(at.success) > 0 or len(at.error) > 0, click=sync)
    assert not at.error, [e.value for e in at.error]
    assert bar[0] == 0.0 and bar[-1] == 1.0 and len(bar) > 3 and bar == sorted(bar)
    assert at.selectbox(key="dataset").options == ["cifar10", "digits"] == available_datasets()
    assert "choose **cifar10**" in at.success[0].value and not at.button
    assert (tmp_path / "cache" / "uat_lab" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()

"""Universal adversarial training (Alg. 3/4, Table 1, Figs. 4/7): train live, then attack what you trained."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from uat_core import plots
from uat_core.recipes.profiles import train_defaults
from uat_core.zoo import trained_on
from webapp import live, page, ui
from webapp import settings as S
from webapp.pages_spec import page_job
from webapp.state import data, models, results

PAGE = "uat"
ALGOS = ["natural", "uat", "lowcost", "uat_pool", "lowcost_pool", "fgsm", "pgd"]
P = page.open_page(PAGE,
                   "Train a network and a universal perturbation against each other. Every minibatch, the weights take "
                   "a descent step on x + δ and δ takes an ascent step (one FGSM-like step, eq. 6). **uFGSM** (Alg. 3) "
                   "computes the two gradients one after the other; **low-cost** (Alg. 4) gets both from the *same* "
                   "backward pass, so it costs no more than natural training. Afterwards every model faces a fresh "
                   "strong universal attack built from scratch against it (Alg. 2 refined from the best of many "
                   "starts), with the best fixed stripe pattern beside it.", "Alg. 3 and 4, Table 1, Figs. 4 and 7",
                   "Training settings", model=False)
ds, D, d, train, test, sb, picked = P.ds, P.D, P.d, P.train, P.test, P.sb, P.picked

algos = sb.multiselect("Train", ALGOS, d["algorithms"], format_func=lambda a: S.ALGO_LABEL[a], **ui.w(PAGE, "algos"))
epochs = sb.slider("Epochs", 1, 20 if ds == "digits" else 10, d["epochs"], **ui.w(PAGE, "epochs"))
size = sb.select_slider("Training images", D.train_sizes, d["train_size"], **ui.w(PAGE, "size"))
eps = P.eps_slider()
rule = sb.radio("δ update (uFGSM / low-cost)", ["fgsm", "sgd", "adam"], horizontal=True,
                format_func={"fgsm": "sign (eq. 6)", "sgd": "SGD (eq. 7)", "adam": "ADAM"}.get, **ui.w(PAGE, "rule"))
asize = sb.select_slider("Robustness attack: images", D.attack_sizes, d["attack_size"], **ui.w(PAGE, "asize"))
aepochs = sb.slider("Robustness attack: epochs", 1, 20, d["attack_epochs"], **ui.w(PAGE, "aepochs"))
seed = sb.number_input("Seed", 0, 10_000, 0, **ui.w(PAGE, "seed"))
algos = [a for a in ALGOS if a in algos]
s = {**d, "algorithms": algos, "epochs": int(epochs), "train_size": int(size), "eps": eps, "delta_rule": rule,
     "attack_size": int(asize), "attack_epochs": int(aepochs), "seed": int(seed)}
want = S.Ref(PAGE, ds, f"arch:{D.arch}", s)


def make_job():
    def done(job, want=want, s=s):
        res = job.result
        for a, m in res["models"].items():
            models.add_session_model(ds, f"trained_{a}", m, f"{S.ALGO_SHORT[a]}, {s['epochs']} epochs")
        complete = not job.stopping and len(res["rows"]) == len(s["algorithms"])
        results.remember(want, res, private=True, complete=complete)
    job = page_job(PAGE, s, train, test, arch=D.arch, device=data.device(), on_done=done)
    job.state["eps"] = eps
    return job


train_steps = int(epochs) * max(1, min(int(size), len(train)) // train_defaults(ds).batch_size)
if train_steps < 100:
    sb.warning(f"A short run: {train_steps} training steps per model. Below about 100 steps the models barely "
               f"learn (the zoo's digits models took 160).")
P.controls(make_job, s, label="Train", disabled=not algos,
           help="Trains each model from scratch in this browser session, then attacks it")
sb.caption(f"{D.arch} on {min(size, len(train))} {ds} images, {train_steps} steps per model · then the strong "
           f"attack (β = 9, {asize} images, "
           f"{aepochs} epochs) against each model · accuracy on {len(test)} test images. Trained models appear in "
           "the other pages' model lists for this session.")

with st.expander("The two algorithms", expanded=False):
    c1, c2 = st.columns(2)
    c1.markdown("**Alg. 3 (uFGSM)**, per minibatch")
    c1.latex(r"\theta \leftarrow \theta - \alpha\,\nabla_\theta\,\ell(x+\delta)")
    c1.latex(r"\delta \leftarrow \Pi_\epsilon\big(\delta + \epsilon\,"
             r"\mathrm{sign}(\mathbb{E}\,\nabla_\delta\,\ell(x+\delta))\big)")
    c2.markdown("**Alg. 4 (low-cost)**: one backward pass gives both gradients")
    c2.latex(r"(g_\theta, g_\delta) = \nabla_{(\theta,\delta)}\,\ell(x+\delta)")
    c2.latex(r"\theta \leftarrow \theta - \alpha g_\theta,\quad "
             r"\delta \leftarrow \Pi_\epsilon(\delta + \epsilon\,\mathrm{sign}(g_\delta))")
    st.markdown(
        "**Why a single δ is a weak adversary, and the pool.** Alg. 3 and 4 carry *one* δ through training. It "
        "settles into one basin, and the network learns to ignore that δ rather than universal perturbations in "
        "general: a fixed ±ε stripe that no optimiser produced then fools it. The **pool** variants keep 4 "
        "universal perturbations in the same passes: image *b* of a minibatch carries member (b + t) mod 4 and "
        "every member ascends on the gradient of its own images. The same forward and backward passes give ∇θ "
        "and all four ∇δ, so the cost per step stays that of the plain algorithm (the pool costs memory, not "
        "passes); the network must resist four different universal perturbations at every step.")


HELDOUT = "held-out protocol: lowest (%)"
ONE_DECIMAL = {c: st.column_config.NumberColumn(format="%.1f") for c in
               ("clean top-1 (%)", "under the strong universal attack (%)", "best fixed pattern (%)", "training (s)",
                HELDOUT)}


def draw(job):
    live.progress_line(job)
    hist = job.state.get("histories", {})
    cur = job.state.get("training")
    c1, c2 = st.columns([3, 1])
    with c1:
        if cur in S.UNIVERSAL_ALGOS and cur in hist and hist[cur]:
            ui.chart(plots.before_after_figure(hist[cur], title=f"Live: {S.ALGO_SHORT[cur]}, minibatch accuracy "
                                                      "before and after the ascent step on δ"), key="uat_live_ba")
        elif hist:
            ui.chart(plots.training_curves({a: h for a, h in hist.items() if h},
                                                  title="Live: minibatch training accuracy"), key="uat_live_acc")
    with c2:
        td = job.state.get("train_deltas", {})
        if cur in td:
            ui.delta_picture(td[cur], job.state["eps"], f"δ being learned by {S.ALGO_SHORT[cur]}")
    if job.state.get("rows"):
        st.dataframe(_table(job.state["rows"]), hide_index=True, column_config=ONE_DECIMAL)


def _table(rows):
    held = any(x.get("heldout_top1") is not None for x in rows)       # the zoo's, once `zoo heldout` has run
    return pd.DataFrame([{"model": S.ALGO_LABEL.get(r["algorithm"], r["algorithm"]),
                          "clean top-1 (%)": round(100 * r["clean_top1"], 1),
                          "under the strong universal attack (%)": round(100 * r["robust_top1"], 1),
                          "best fixed pattern (%)": None if r.get("fixed_top1") is None
                          else round(100 * r["fixed_top1"], 1),
                          **({HELDOUT: None if r.get("heldout_top1") is None else round(100 * r["heldout_top1"], 1)}
                             if held else {}),
                          "training (s)": None if r.get("train_seconds") is None else round(r["train_seconds"], 1),
                          "trained on": r.get("device") or "this machine",
                          "forward/backward passes": f"{r['forward']}/{r['backward']}" if r.get("forward") else ""}
                         for r in rows])


def zoo_view() -> dict | None:
    """Table 1 from the shipped zoo: its numbers, its perturbations and (if shipped) its training curves."""
    zoo = models.zoo(ds)
    if not zoo:
        return None
    extras = results.precomputed(ds).get("extras", {}).get("uat_histories", {})
    rows, deltas, hist, tdeltas = [], {}, {}, {}
    for a, e in zoo.items():
        p = e.get("passes") or {}
        rows.append({"name": S.ALGO_SHORT.get(a, a), "algorithm": a, "clean_top1": e["clean_top1"],
                     "robust_top1": e.get("perturbed_top1", e.get("robust_top1")), "fixed_top1": e.get("fixed_top1"),
                     "train_seconds": e.get("train_seconds"), "forward": p.get("forward"),
                     "device": trained_on(e.get("device")),
                     "heldout_top1": (e.get("heldout") or {}).get("heldout_robust_top1"),
                     "backward": p.get("backward")})
        dz = models.zoo_delta(ds, a)
        if dz is not None:
            deltas[a] = dz
        x = extras.get(a)
        if x and x.get("sha") == e["sha256"]:
            hist[a] = x["history"]
            if "train_delta" in x:
                tdeltas[a] = x["train_delta"]
    return {"rows": rows, "attack_deltas": deltas, "histories": hist, "train_deltas": tdeltas, "source": "zoo",
            "eps": next(iter(zoo.values()))["eps"]}


job = live.panel(PAGE, draw)
if job is not None and not job.done:
    st.stop()

shown = results.find(want)
if shown is None:
    res = zoo_view()
    if res is None:
        st.info("No zoo models for this dataset: press **Train**.")
        st.stop()
    n_att = sorted({(e.get("perturbation_attack") or {}).get("attack_size") for e in models.zoo(ds).values()} - {None})
    on = f"{n_att[0]:,}" if len(n_att) == 1 else "some"
    st.info("Showing the shipped zoo models (trained with the zoo recipe; their robustness measured with a fresh "
            f"strong universal attack built on {on} training images, on the whole test split). Press **Train** to "
            "train your own live.",
            icon=":material/inventory_2:")
    sh_eps = float(res["eps"])
else:
    ui.shown_note(shown, "Train")
    res = shown.result
    sh_eps = float(shown.settings.get("eps", eps))
rows = res["rows"]
if not rows:
    st.warning("Training was stopped before any model was attacked.")
    st.stop()
by = {r["algorithm"]: r for r in rows}
st.markdown("**Test accuracy under a universal attack built against each model** (clean accuracy below)")
PER_ROW = 4                                   # eight cards in one row cut their figures to "56…"
for i in range(0, len(rows), PER_ROW):
    for c, r in zip(st.columns(PER_ROW), rows[i:i + PER_ROW]):
        c.metric(S.ALGO_SHORT.get(r["algorithm"], r["algorithm"]), ui.pct(r["robust_top1"]),
                 f"clean {ui.pct(r['clean_top1'])}",
                 delta_color="off", delta_arrow="off", border=True, help=S.ALGO_LABEL.get(r["algorithm"]))
c1, c2 = st.columns([3, 2])
with c1:
    ui.chart(plots.robustness_bars([{**r, "name": S.ALGO_SHORT.get(r["algorithm"], r["algorithm"])} for r in rows],
                                   title="Clean vs universal-attack test accuracy"), key="uat_bars")
with c2:
    st.markdown("**The perturbations that attack each model**")
    dl = res.get("attack_deltas", {})
    per_row = 3
    items = list(dl.items())
    for i in range(0, len(items), per_row):
        cols = st.columns(per_row)
        for c, (a, dd) in zip(cols, items[i:i + per_row]):
            r = by.get(a)
            ui.delta_picture(dd, sh_eps, f"{S.ALGO_SHORT.get(a, a)}" + (f" · {ui.pct(r['robust_top1'])}" if r else ""),
                             where=c, size=128)
    st.caption("The strong attack built from scratch against each model. Against the natural model δ is a texture "
               "spread "
               "over the image; against the robust models it must look more like the digits or objects "
               "themselves (Figs. 4, 7).")
st.markdown("**Table 1**")
st.dataframe(_table(rows), hide_index=True, column_config=ONE_DECIMAL)
held = [e["heldout"] for e in models.zoo(ds).values() if e.get("heldout")] if res.get("source") == "zoo" else []
if held:
    h0 = held[0]
    st.caption(f"*{HELDOUT}*: the test split cut in two stratified halves; the strong attack and the best fixed "
               f"pattern built and picked on {h0.get('heldout_attack_size', 0):,} images of one half, scored on the "
               f"{h0.get('heldout_score_size', 0):,} images of the other, beside the δ built on training images: "
               "the lowest of the three. A model trained against patterns on the training images cannot flatter it "
               "(docs/results.md, held-out protocol).")
if "natural" in by and "lowcost" in by and by["lowcost"].get("forward"):
    st.caption("Low-cost UAT uses as many forward/backward passes as natural training; uFGSM twice as many.")

hist = res.get("histories", {})
if hist:
    st.subheader("Training curves")
    tabs = st.tabs([S.ALGO_SHORT.get(a, a) for a in hist] + ["all models"])
    for t, (a, h) in zip(tabs, hist.items()):
        with t:
            if a in S.UNIVERSAL_ALGOS and any("acc_after" in x for x in h):
                cc1, cc2 = st.columns([3, 1])
                ui.chart(plots.before_after_figure(h), key=f"uat_ba_{a}", where=cc1)
                if a in res.get("train_deltas", {}):
                    ui.delta_picture(res["train_deltas"][a], sh_eps, "the universal δ at the end of training",
                                     where=cc2)
                cc1.caption("The shaded gap: how much one ascent step on δ still hurts the current weights.")
            else:
                ui.chart(plots.training_curves({a: h}), key=f"uat_acc_{a}")
    with tabs[-1]:
        ui.chart(plots.training_curves({a: h for a, h in hist.items()}), key="uat_acc_all")

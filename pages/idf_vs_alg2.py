"""iDeepFool vs Alg. 2 (paper Table 2): the same model and images; time and accuracy for both."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from uat_core import plots
from webapp import live, page, ui

PAGE = "idf"
NAMES = {"idf": "iDeepFool (Alg. 1)", "alg2": "Alg. 2 (PGD, β = 9)"}
SHORT = {"idf": "iDeepFool", "alg2": "Alg. 2"}
P = page.open_page(PAGE,
                   "The original universal perturbation (Moosavi-Dezfooli et al., 2017) runs DeepFool on every image "
                   "that is not fooled yet and folds its minimal step into δ (Alg. 1, *iDeepFool*): many backward "
                   "passes per image. Alg. 2 takes one gradient step per minibatch. Both run here on the same model "
                   "and the same training images; the clock counts computation only.", "Table 2",
                   "Settings")
ds, D, d, train, test, sb, picked = P.ds, P.D, P.d, P.train, P.test, P.sb, P.picked

eps = P.eps_slider()
size = sb.select_slider("Attack-set size (both methods)", [32, 64, 128, 256, 500], d["attack_size"],
                        **ui.w(PAGE, "size"))
passes = sb.slider("iDeepFool passes over the images", 1, 5, d["idf_passes"], **ui.w(PAGE, "passes"))
epochs = sb.slider("Alg. 2 epochs", 1, 20, d["alg2_epochs"], **ui.w(PAGE, "epochs"))
s = P.settings(eps=eps, attack_size=int(size), idf_passes=int(passes), alg2_epochs=int(epochs))
want, default = P.refs(s)


make_job = P.job_maker(s, lambda job: not job.stopping and set(job.result) == {"idf", "alg2"}, show={"eps": eps})
P.controls(make_job, s, disabled=picked is None)
sb.caption(f"iDeepFool works on minibatches of {d['idf_batch']} images (DeepFool: 10 candidate classes, up to 10 "
           "iterations each), so one of its steps can take a few seconds on a CPU.")


def draw(job):
    live.progress_line(job)
    secs = job.state.get("seconds", {})
    c1, c2 = st.columns([3, 1])
    with c1:
        names = [m for m in ("idf", "alg2") if m in secs]
        ui.chart(plots.timing_bars([NAMES[m] for m in names], [secs[m] for m in names],
                                          title="Live: computation time so far"), key="idf_live_time")
    with c2:
        if job.state.get("delta") is not None:
            ui.delta_picture(job.state["delta"], job.state["eps"], job.state.get("phase", ""))


job = live.panel(PAGE, draw)
shown = live.stored_result(job, want, default)
res = shown.result
sh_eps = float(shown.settings.get("eps", eps))
methods = [m for m in ("idf", "alg2") if m in res]
cols = st.columns([1] + [2] * len(methods))
if methods:
    cols[0].metric("Clean top-1", ui.pct(res[methods[0]]["clean_top1"]), border=True)
for col, m in zip(cols[1:], methods):
    with col.container(border=True):
        st.markdown(f"**{NAMES[m]}**")
        a, b = st.columns(2)
        a.metric(f"{SHORT[m]}: accuracy", ui.pct(res[m]["perturbed_top1"]),
                 f"{100 * (res[m]['perturbed_top1'] - res[m]['clean_top1']):+.1f} pp",
                 help="Test accuracy with this method's δ added to every test image")
        b.metric(f"{SHORT[m]}: seconds", f"{res[m]['seconds']:.1f}", help="Computation time, page drawing excluded")
if len(methods) == 2 and res["alg2"]["seconds"] > 0:
    st.success(f"Alg. 2 took **{res['alg2']['seconds']:.1f} s** against iDeepFool's **{res['idf']['seconds']:.1f} s** "
               f"(**{res['idf']['seconds'] / res['alg2']['seconds']:.1f}×** faster) and leaves "
               f"**{ui.pct(res['alg2']['perturbed_top1'])}** test accuracy against "
               f"**{ui.pct(res['idf']['perturbed_top1'])}**.")
c1, c2 = st.columns([3, 2])
with c1:
    ui.chart(plots.timing_bars([NAMES[m] for m in methods], [res[m]["seconds"] for m in methods],
                                      [res[m]["perturbed_top1"] for m in methods],
                                      title="Time to build δ (label: test accuracy under it)"), key="idf_time")
with c2:
    cols = st.columns(len(methods))
    for col, m in zip(cols, methods):
        ui.delta_picture(res[m]["delta"], sh_eps, NAMES[m], where=col, size=160)
st.dataframe(pd.DataFrame([{"method": NAMES[m], "seconds": res[m]["seconds"], "steps": res[m]["steps"],
                            "backward passes": res[m]["backwards"],
                            "test accuracy under δ (%)": 100 * res[m]["perturbed_top1"],
                            "fooling ratio (%)": 100 * res[m]["fooling_ratio"]} for m in methods]),
             hide_index=True, column_config={
                 "seconds": st.column_config.NumberColumn(format="%.1f"),
                 "test accuracy under δ (%)": st.column_config.NumberColumn(format="%.1f"),
                 "fooling ratio (%)": st.column_config.NumberColumn(format="%.1f")})
st.caption(f"Both on the same {shown.settings.get('attack_size')} training images; accuracy on {len(test)} test "
           "images. A backward pass is one batched gradient computation (iDeepFool needs one per candidate class "
           "and DeepFool iteration; Alg. 2 one per step).")

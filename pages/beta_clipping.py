"""β clipping (paper Fig. 5): accuracy under attack against the clip β of the per-image loss."""
from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from uat_core import plots
from uat_core.recipes.experiments import beta_points, summarize
from webapp import live, page, ui
from webapp import settings as S

PAGE = "beta"
P = page.open_page(PAGE,
                   "Alg. 2 maximises the cross-entropy **clipped at β**. Each point below is a full attack (PGD, sign "
                   "gradient by default) built on a random subset of training images and measured on the test images; "
                   "the error bars are the spread over the random subsets. Lower accuracy = stronger attack. The "
                   "attacks are plain Alg. 2 from δ = 0, not the strong multi-start attack, so that only β changes "
                   "between the points: they leave more images correct than the strong attack does.",
                   "Fig. 5, eq. (3)", "Sweep settings")
ds, D, d, train, test, sb, picked = P.ds, P.D, P.d, P.train, P.test, P.sb, P.picked

eps = P.eps_slider()
betas = sb.multiselect("β values", S.BETAS, d["betas"], format_func=S.fmt_beta, **ui.w(PAGE, "betas"))
repeats = sb.slider("Random attack subsets per β", 1, 5, d["repeats"], **ui.w(PAGE, "repeats"))
size = sb.select_slider("Attack-set size", D.attack_sizes, d["attack_size"], **ui.w(PAGE, "size"))
epochs = sb.slider("Epochs per attack", 1, 10, d["epochs"], **ui.w(PAGE, "epochs"))
opt = sb.segmented_control("Optimizer", list(S.OPTIMIZERS), default=d["optimizer"], required=True,
                           format_func=lambda o: S.OPT_LABEL[o].split(" ")[0], **ui.w(PAGE, "opt"))

betas = sorted(float(b) for b in betas)
s = P.settings(eps=eps, betas=betas, repeats=int(repeats), attack_size=int(size), epochs=int(epochs), optimizer=opt)
want, default = P.refs(s)


make_job = P.job_maker(s, lambda job: job.result["complete"])
n_attacks = len(beta_points(s))
P.controls(make_job, s, disabled=picked is None or not betas,
           help=f"{n_attacks} attacks, each on {size} images for {epochs} epochs")
sb.caption(f"{n_attacks} attacks · accuracy on {len(test)} test images")

with st.expander("Why clipping helps", expanded=True):
    c1, c2 = st.columns([2, 3])
    c1.latex(r"\hat\ell_\beta(x_i+\delta) = \min\big(\ell(f(x_i+\delta), y_i),\ \beta\big)")
    c2.markdown(
        "The cross-entropy of an image that is already misclassified keeps growing as δ pushes it further. "
        "With plain cross-entropy (β = ∞) those few images dominate the average gradient, and δ keeps pushing "
        "them deeper instead of fooling new ones. Clipping caps each image's say: once its loss passes β its "
        "gradient is zero, so the ascent spends the budget on the images still classified correctly. Clip too "
        "early (small β) and images stop pulling before they are reliably fooled.")


def figure(rows, clean):
    xs, means, stds = summarize(rows, "x")
    fig = plots.sweep_figure([S.fmt_beta(x) for x in xs], means, stds, x_title="β (clip of the per-image loss)",
                             title="Test accuracy under the universal perturbation", clean=clean)
    return fig, xs, means, stds


job = live.panel(PAGE, lambda j: live.sweep_panel(j, lambda rows, clean: figure(rows, clean)[0], "beta"))
shown = live.stored_result(job, want, default, sweep=True)
res = shown.result
rows = res["rows"]
fig, xs, means, stds = figure(rows, res.get("clean_top1"))
best = min(range(len(xs)), key=lambda i: means[i])
inf_i = next((i for i, x in enumerate(xs) if math.isinf(x)), None)
c = st.columns(4)
c[0].metric("Clean top-1", ui.pct(res.get("clean_top1")), border=True)
c[1].metric("Strongest β", S.fmt_beta(xs[best]), border=True, help="The β whose attacks leave the lowest accuracy")
c[2].metric(f"Accuracy at β = {S.fmt_beta(xs[best])}", ui.pct(means[best]), border=True)
if inf_i is not None:
    c[3].metric("Accuracy at β = ∞ (plain CE)", ui.pct(means[inf_i]), f"{100 * (means[inf_i] - means[best]):+.1f} pp",
                delta_color="inverse", border=True, help="How much weaker the unclipped attack is")
if inf_i is not None and len(xs) > 1:
    gap, spread = means[inf_i] - means[best], max(stds[best], stds[inf_i])
    if math.isinf(xs[best]) or gap <= spread:
        st.info(f"Here clipping does not help: plain cross-entropy (β = ∞, {ui.pct(means[inf_i])}) is as strong as "
                f"the best clip within the spread of the random subsets ({100 * spread:.1f} pp). The paper's Fig. 5 "
                "gain does not show on this model with these settings.", icon=":material/info:")
    else:
        st.success(f"Clipping helps here: β = {S.fmt_beta(xs[best])} leaves {100 * gap:.1f} pp fewer test images "
                   f"correct than plain cross-entropy, more than the spread of the random subsets "
                   f"({100 * spread:.1f} pp).", icon=":material/check_circle:")
ui.chart(fig, key="beta_sweep")
table = pd.DataFrame({"β": [S.fmt_beta(x) for x in xs], "accuracy under attack (%)": [100 * m for m in means],
                      "std (%)": [100 * v for v in stds],
                      "attacks": [sum(1 for r in rows if r["x"] == x) for x in xs]})
st.dataframe(table, hide_index=True, column_config={
    "accuracy under attack (%)": st.column_config.NumberColumn(format="%.1f"),
    "std (%)": st.column_config.NumberColumn(format="%.1f")})
secs = sum(r["seconds"] for r in rows)
st.caption(f"{len(rows)} attacks, {secs:.0f} s of computation in all; each on {rows[0]['size']} training images "
           f"for {rows[0]['steps']} steps; accuracy on {len(test)} test images.")

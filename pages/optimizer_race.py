"""Optimizer race (paper Figs. 2-3): SGD, MSGD, ADAM and PGD build δ on the same data, side by side."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from uat_core import plots
from uat_core.engine.attacks.universal import DEFAULT_STEP
from webapp import live, page, ui
from webapp import settings as S

PAGE = "race"
ORDER = ("sgd", "msgd", "adam", "pgd")
P = page.open_page(PAGE,
                   "The same images, the same budget ε, the same clipped loss (β = 9); only the update rule differs. "
                   "The four attacks advance one step each in turn, so their curves grow together. Note the step sizes "
                   "(left): PGD and ADAM move each pixel by about τ per step whatever the size of the gradient, while "
                   "SGD and MSGD multiply the raw gradient, so their speed depends on the model's gradient scale and "
                   "on τ: try other step sizes in the attack lab.", "Figs. 2-3",
                   "Race settings")
ds, D, d, train, test, sb, picked = P.ds, P.D, P.d, P.train, P.test, P.sb, P.picked

eps = P.eps_slider()
epochs = sb.slider("Epochs", 1, 20, d["epochs"], **ui.w(PAGE, "epochs"))
size = sb.select_slider("Attack-set size", D.attack_sizes, d["attack_size"], **ui.w(PAGE, "size"))
seed = sb.number_input("Seed", 0, 10_000, 0, **ui.w(PAGE, "seed"))
s = P.settings(eps=eps, epochs=int(epochs), attack_size=int(size), seed=int(seed))
want, default = P.refs(s)


make_job = P.job_maker(s, lambda job: not job.stopping, show={"eps": eps})
P.controls(make_job, s, label="Start the race", disabled=picked is None)
sb.caption("Step sizes: PGD and ADAM τ = 0.1·ε per pixel; SGD τ = "
           f"{DEFAULT_STEP['sgd']:g}·ε and MSGD τ = {DEFAULT_STEP['msgd']:g}·ε (momentum 0.9) per unit gradient.")


def deltas_row(deltas: dict, eps_: float, accs: dict | None = None):
    cols = st.columns(len(ORDER))
    for c, o in zip(cols, ORDER):
        if o in deltas:
            cap = S.OPT_LABEL[o] + (f" · test acc {ui.pct(accs[o])}" if accs else "")
            ui.delta_picture(deltas[o], eps_, cap, where=c, size=160)


def draw(job):
    live.progress_line(job)
    ui.chart(plots.race_figure({o.upper(): job.state["histories"][o] for o in ORDER}, smooth=3,
                                      title="Live: minibatch accuracy under each optimizer's δ"),
                    key="race_live")
    deltas_row(job.state["deltas"], job.state["eps"])


job = live.panel(PAGE, draw)
shown = live.stored_result(job, want, default, "Start the race")
res = shown.result
shown_eps = float(shown.settings.get("eps", eps))
runs = res["runs"]
cols = st.columns(len(ORDER) + 1)
cols[0].metric("Clean top-1", ui.pct(res["clean_top1"]), border=True)
for c, o in zip(cols[1:], ORDER):
    if o in runs:
        c.metric(f"{S.OPT_LABEL[o]}", ui.pct(runs[o]["perturbed_top1"]),
                 f"{100 * (runs[o]['perturbed_top1'] - res['clean_top1']):+.1f} pp", border=True,
                 help="Test accuracy under this optimizer's δ")
ui.chart(plots.race_figure({o.upper(): runs[o]["history"] for o in ORDER if o in runs}, smooth=3),
                key="race_curves")
st.markdown("**The four perturbations** (grey = 0, black = −ε, white = +ε)")
deltas_row({o: r["delta"] for o, r in runs.items()}, shown_eps, {o: r["perturbed_top1"] for o, r in runs.items()})
st.dataframe(pd.DataFrame([{"optimizer": S.OPT_LABEL[o], "test accuracy under δ (%)": 100 * runs[o]["perturbed_top1"],
                            "final minibatch loss": runs[o]["history"][-1]["loss"] if runs[o]["history"] else None,
                            "steps": runs[o]["steps"], "seconds": runs[o]["seconds"]} for o in ORDER if o in runs]),
             hide_index=True, column_config={
                 "test accuracy under δ (%)": st.column_config.NumberColumn(format="%.1f"),
                 "final minibatch loss": st.column_config.NumberColumn(format="%.2f"),
                 "seconds": st.column_config.NumberColumn(format="%.1f")})

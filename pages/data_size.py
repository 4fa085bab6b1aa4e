"""How much data (paper Fig. 6): accuracy under attack against the number of images the attack sees."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from uat_core import plots
from uat_core.experiments import summarize
from webapp import live, state, ui
from webapp import settings as S
from webapp.boot import through_app
from webapp.jobs import page_job, size_points

through_app()

PAGE = "size"
ds = state.dataset()
D = S.DATASET[ds]
d = S.defaults(PAGE, ds)
train = state.train_set(ds)
test = state.test_set(ds, d["test_size"])
SIZES = sorted(set(d["sizes"] + D["attack_sizes"] + [10, 25, 50]))

ui.header("How much data does a universal attack need?",
          "Each point is an Alg. 2 attack built on a random subset of *n* training images and measured on the "
          "test images, which it never saw. Every attack takes the same number of steps, so only the amount of "
          "data changes. A handful of images per class already yields a δ that fools the model on unseen "
          "images.", "Fig. 6")

sb = st.sidebar
sb.header("Settings")
picked = ui.model_select(PAGE, ds, sb)
eps = sb.slider("ε (0-255 units)", 1, 32, d["eps"], help=D["why_eps"], **ui.w(PAGE, "eps"))
sizes = sb.multiselect("Attack-set sizes n", [n for n in SIZES if n <= len(train)], d["sizes"], **ui.w(PAGE, "sizes"))
repeats = sb.slider("Random subsets per size", 1, 5, d["repeats"], **ui.w(PAGE, "repeats"))
steps = sb.slider("Steps per attack", 5, 60, d["steps"], step=5, **ui.w(PAGE, "steps"))
sizes = sorted(int(n) for n in sizes)
s = {**d, "model": st.session_state.get(f"{PAGE}_model", "natural"), "eps": eps, "sizes": sizes,
     "repeats": int(repeats), "steps": int(steps)}
key = S.key(PAGE, ds, picked.tag, s) if picked else None
default_key = S.key(PAGE, ds, picked.tag, {**d, "model": s["model"]}) if picked else None


def make_job():
    def done(job, key=key, s=s, private=picked.private):
        state.remember(PAGE, key, s, job.result, private, complete=job.result["complete"])
    return page_job(PAGE, s, train, test, model=picked.model, device=state.device(), on_done=done)


live.controls(PAGE, make_job, disabled=picked is None or not sizes)
sb.caption(f"{len(size_points(s, len(train)))} attacks · PGD, β = 9 · accuracy on {len(test)} test images")


def figure(rows, clean):
    xs, means, stds = summarize(sorted(rows, key=lambda r: r["x"]), "x")
    fig = plots.sweep_figure(xs, means, stds, x_title="attack-set size n (training images)",
                             title="Test accuracy under a δ built from n images", clean=clean)
    return fig, xs, means, stds


job = live.panel(PAGE, lambda j: live.sweep_panel(j, lambda rows, clean: figure(rows, clean)[0], "size"))
shown = live.stored_result(PAGE, ds, job, picked, key, default_key, sweep=True)
res = shown.result
rows = res["rows"]
fig, xs, means, stds = figure(rows, res.get("clean_top1"))
c = st.columns(3)
c[0].metric("Clean top-1", ui.pct(res.get("clean_top1")), border=True)
c[1].metric(f"Under a δ from {xs[0]} images", ui.pct(means[0]), border=True)
c[2].metric(f"Under a δ from {xs[-1]} images", ui.pct(means[-1]), border=True)
ui.chart(fig, key="size_sweep")
st.dataframe(pd.DataFrame({"n (training images)": xs, "images per class": [x / len(train.classes) for x in xs],
                           "accuracy under attack (%)": [100 * m for m in means], "std (%)": [100 * v for v in stds],
                           "steps": [next(r["steps"] for r in rows if r["x"] == x) for x in xs]}),
             hide_index=True, column_config={
                 "images per class": st.column_config.NumberColumn(format="%.1f"),
                 "accuracy under attack (%)": st.column_config.NumberColumn(format="%.1f"),
                 "std (%)": st.column_config.NumberColumn(format="%.1f")})

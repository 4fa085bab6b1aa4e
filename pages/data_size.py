"""How much data (paper Fig. 6): accuracy under attack against the number of images the attack sees."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from uat_core import plots
from uat_core.recipes.experiments import size_points, summarize
from webapp import live, page, ui

PAGE = "size"
P = page.open_page(PAGE,
                   "Each point is a plain Alg. 2 attack (from δ = 0, not the strong attack) built on a random "
                   "subset of *n* training images and measured on the test images, which it never saw. Every attack "
                   "takes about the same number of steps (whole passes over its images, as near the setting as they "
                   "come: the table gives each one's), so mainly the amount of data changes. The paper finds a "
                   "handful of images per class already enough (Fig. 6); the cards below say how it goes here.",
                   "Fig. 6", "Settings")
ds, D, d, train, test, sb, picked = P.ds, P.D, P.d, P.train, P.test, P.sb, P.picked
SIZES = sorted(set(d["sizes"] + D.attack_sizes + [10, 25, 50]))

eps = P.eps_slider()
sizes = sb.multiselect("Attack-set sizes n", [n for n in SIZES if n <= len(train)], d["sizes"], **ui.w(PAGE, "sizes"))
repeats = sb.slider("Random subsets per size", 1, 5, d["repeats"], **ui.w(PAGE, "repeats"))
steps = sb.slider("Steps per attack", 5, 60, d["steps"], step=5, **ui.w(PAGE, "steps"))
sizes = sorted(int(n) for n in sizes)
s = P.settings(eps=eps, sizes=sizes, repeats=int(repeats), steps=int(steps))
want, default = P.refs(s)


make_job = P.job_maker(s, lambda job: job.result["complete"])
P.controls(make_job, s, disabled=picked is None or not sizes)
sb.caption(f"{len(size_points(s, len(train)))} attacks · PGD, β = 9 · accuracy on {len(test)} test images")


def figure(rows, clean):
    xs, means, stds = summarize(sorted(rows, key=lambda r: r["x"]), "x")
    fig = plots.sweep_figure(xs, means, stds, x_title="attack-set size n (training images)",
                             title="Test accuracy under a δ built from n images", clean=clean)
    return fig, xs, means, stds


job = live.panel(PAGE, lambda j: live.sweep_panel(j, lambda rows, clean: figure(rows, clean)[0], "size"))
shown = live.stored_result(job, want, default, sweep=True)
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

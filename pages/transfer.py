"""Transfer: the δ made on model A added to the test images of model B, for every pair in the zoo."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from uat_core import plots
from webapp import live, page, ui
from webapp import settings as S
from webapp.pages_spec import page_job
from webapp.state import data, models, results

PAGE = "transfer"
P = page.open_page(PAGE,
                   "Each zoo model ships with the universal perturbation the strong attack built against it. Here "
                   "every such δ (rows) is added to the test images of every model (columns). The diagonal is each "
                   "model under its own δ; off the diagonal, how well a δ made on one network fools another.",
                   "Universality across models", "Matrix settings", model=False)
ds, D, d, train, test, sb = P.ds, P.D, P.d, P.train, P.test, P.sb
zoo = models.zoo(ds)
with_delta = [a for a in zoo if models.zoo_delta(ds, a) is not None]
chosen = sb.multiselect("Zoo models", list(zoo), with_delta, format_func=lambda a: S.ALGO_LABEL.get(a, a),
                        **ui.w(PAGE, "models"))
latest_lab = results.latest("lab", ds)
lab_ok = latest_lab is not None
extra = sb.toggle("Add the δ of my last attack-lab run as a row", False, disabled=not lab_ok,
                  help="Run an attack in the attack lab first." if not lab_ok else None, key=f"{PAGE}_extra")
chosen = [a for a in zoo if a in chosen]
entries = [zoo[a] for a in chosen]
with_lab = extra and lab_ok
# The lab δ is this session's own (possibly from a stopped run): name it by its content and its state, and
# keep a matrix that uses it in this session only, so no other visitor is shown it as a finished result.
tag = S.zoo_set_tag(entries) + (f"+lab:{results.tensor_tag(latest_lab['result']['delta'])}"
                                f"{'' if latest_lab.get('complete', True) else ':stopped'}" if with_lab else "")
s = {**d, "models": chosen}
want = S.Ref(PAGE, ds, tag, s)
default = S.Ref(PAGE, ds, S.zoo_set_tag([zoo[a] for a in with_delta]), {**d, "models": with_delta})


def make_job():
    nets = {S.ALGO_SHORT.get(a, a): models.zoo_model(ds, a).model for a in chosen}
    deltas = {S.ALGO_SHORT.get(a, a): models.zoo_delta(ds, a) for a in chosen if a in with_delta}
    if with_lab:
        deltas["my lab δ"] = latest_lab["result"]["delta"]

    def done(job, want=want):
        P.remember(want, job.result, complete=job.result["complete"], private=with_lab)
    return page_job(PAGE, s, train, test, models=nets, deltas=deltas, device=data.device(), on_done=done)


n_rows = len(chosen) + (1 if with_lab else 0)
P.controls(make_job, s, label="Compute", disabled=len(chosen) < 1, n_models=len(chosen), n_deltas=n_rows)
sb.caption(f"{len(chosen)}×{n_rows} evaluations on {len(test)} test images")


def draw(job):
    live.progress_line(job)
    ui.chart(plots.transfer_heatmap(job.state["matrix"], job.state["sources"], job.state["targets"]),
                    key="transfer_live")


job = live.panel(PAGE, draw)
res = live.stored_result(job, want, default, "Compute",
                         none="No matrix for this selection yet: press **Compute**.",
                         partial="Stopped early: empty cells were not computed.").result
fig = plots.transfer_heatmap(res["matrix"], res["sources"], res["targets"])
fig.update_layout(height=120 + 60 * len(res["sources"]))
ui.chart(fig, key="transfer_map")
clean = res.get("clean", {})
st.markdown("**Clean test accuracy of each model (no δ)**")
st.dataframe(pd.DataFrame([{t: round(100 * clean[t], 1) for t in res["targets"] if t in clean}]), hide_index=True)
own = [(s_, res["matrix"][i][res["targets"].index(s_)]) for i, s_ in enumerate(res["sources"]) if s_ in res["targets"]]
if own:
    st.caption("Reading the matrix: a low number means the row's δ fools the column's model. Robust models "
               "(uFGSM, low-cost, PGD …) keep their accuracy under δ made on the natural model, and their own δ "
               "transfers differently.")

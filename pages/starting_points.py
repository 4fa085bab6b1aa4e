"""Why starting points matter: the bank of fixed patterns, the model's accuracy under each, and what it
means for an attack that climbs a non-concave objective from δ = 0."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from uat_core.recipes import experiments
from uat_core import plots
from webapp import live, page, ui
from webapp import settings as S
from webapp.state import data, models

PAGE = "bank"
P = page.open_page(PAGE,
                   "Before any optimisation: stripes, checkerboards and flat colours at ±ε, the **same** pattern for "
                   "every image. The bars are the model's test accuracy under each of them, strongest first. On "
                   "CIFAR-10 the best of these beats Alg. 2 started at δ = 0, which is why the project's strong attack "
                   "starts from them.",
                   "Alg. 2's objective is not concave",
                   "Bank settings", train=False, upload=False)
ds, D, d, train, test, sb, picked = P.ds, P.D, P.d, P.train, P.test, P.sb, P.picked

eps = P.eps_slider()
s = P.settings(eps=int(eps))
want, default = P.refs(s)


make_job = P.job_maker(s, lambda job: job.result["complete"])
P.controls(make_job, s, label="Score", disabled=picked is None,
           help=f"every pattern on {len(test)} test images")
sb.caption(f"Accuracy on {len(test)} {S.DS_LABEL[ds]} test images (a fixed stratified subset)")


@st.cache_data(show_spinner=False, max_entries=32)
def shipped_on_these(ds: str, algo: str, sha: str, n: int) -> float | None:
    """The shipped δ's accuracy on the page's own ``n`` test images (``sha`` keys the cache to that δ)."""
    dz = models.zoo_delta(ds, algo) if algo else None
    if dz is None:
        return None
    return experiments.top1_under(models.zoo_model(ds, algo).model, data.test_set(ds, n), dz, data.device())


def draw(job):
    live.progress_line(job)
    acc = job.state.get("accs") or []
    if acc:
        order = sorted(range(len(acc)), key=lambda k: acc[k])
        ui.chart(plots.bank_figure([job.state["names"][k] for k in order], [acc[k] for k in order],
                                   job.state.get("clean"), title="Live: accuracy under each pattern scored so far"),
                 key="bank_live")


job = live.panel(PAGE, draw)
shown = live.stored_result(job, want, default, "Score",
                           none="No scores for these settings yet: press **Score**.",
                           partial="Stopped early: only part of the bank was scored.")
res = shown.result
names, accs = res["names"], res["accs"]
rank = st.slider("Pattern (1 = the strongest)", 1, len(names), 1, **ui.w(PAGE, "rank"))
i = rank - 1
res_eps = float(shown.settings.get("eps", eps))
left, right = st.columns([3, 1], gap="large")
with left:
    ui.chart(plots.bank_figure(names, accs, res.get("clean"), highlight=i), key="bank_bars")
with right:
    ui.delta_picture(res["patterns"][i], res_eps / 255, f"#{rank}: {names[i]}", size=192)
    st.metric("Test accuracy under it", ui.pct(accs[i]),
              f"{100 * (accs[i] - res['clean']):+.1f} pp from clean", delta_color="inverse", border=True)

zoo_e = picked.entry or {}
n = len(test)
rows = [{"what": f"clean ({n} test images)", "accuracy (%)": 100 * res["clean"]},
        {"what": f"best fixed pattern here ({names[0]}; picked on these same {n} images, so optimistic)",
         "accuracy (%)": 100 * accs[0]},
        {"what": f"median pattern ({n} test images)", "accuracy (%)": 100 * accs[len(accs) // 2]}]
same_eps = zoo_e.get("perturbed_top1") is not None and int(zoo_e.get("eps", -1)) == int(res_eps)
if same_eps:
    how = "strong attack" if zoo_e.get("perturbation_attack", {}).get("attack") == "strong" else "Alg. 2"
    shipped = shipped_on_these(ds, zoo_e.get("algorithm", ""), zoo_e.get("perturbation_sha256", ""), n)
    if shipped is not None:
        rows.append({"what": f"the shipped δ ({how}, built on training images; these {n} test images)",
                     "accuracy (%)": 100 * shipped})
    rows.append({"what": f"the shipped δ ({how}; whole test split)", "accuracy (%)": 100 * zoo_e["perturbed_top1"]})
    if zoo_e.get("fixed_top1") is not None:
        rows.append({"what": "the baseline: best fixed pattern picked on training images (whole test split)",
                     "accuracy (%)": 100 * zoo_e["fixed_top1"]})
st.dataframe(pd.DataFrame(rows), hide_index=True,
             column_config={"accuracy (%)": st.column_config.NumberColumn(format="%.1f")})

st.subheader("Why this matters")
st.markdown(
    "Alg. 2 maximises the mean clipped loss over δ by gradient ascent. That objective is **not concave**: it has "
    "many hills, and gradient ascent climbs the one it starts on. δ = 0 sits at the foot of a low one (every image "
    "pulls δ its own way, and the average gradient points to a pattern that fools few of them), while some of "
    "these fixed patterns already stand near the top of a much higher hill. Refining the best pattern by Alg. 2 "
    "adds a few points; starting from zero never gets there.\n\n"
    "So a universal attack is only as honest as the baseline beside it. The strong attack (the *Strong attack* "
    "switch of the attack lab, `python -m uat_core attack --strong`) screens this bank and random starts on a "
    "few attack images, refines Alg. 2 from the best ones and from zero, keeps the leaders, and is reported "
    "next to the best fixed pattern everywhere in this project.\n\n"
    "**Try it:** compare the natural model with the uFGSM model. A model trained against one δ that Alg. 3 kept "
    "refining can still fall for a stripe that no optimiser produced.")

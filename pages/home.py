"""Home: the idea in a few lines and one picture, what data and models are in use, the way to the pages."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from uat_core.recipes import experiments
from uat_core.zoo import trained_on
from webapp import settings as S
from webapp import ui
from webapp.boot import through_app
from webapp.pages_spec import PAGES
from webapp.state import data, models

through_app()

ds = data.dataset()
D = S.DATASET[ds]

st.title("UAT Lab")
zoo = models.zoo(ds)
st.markdown(f"#### {ui.headline(zoo.get('natural'))}")
st.caption("An interactive companion to Shafahi, Najibi, Xu, Dickerson, Davis and Goldstein, *Universal "
           "Adversarial Training*, AAAI 2020 ([arXiv:1811.11304](https://arxiv.org/abs/1811.11304)).")


@st.cache_data(show_spinner=False, max_entries=8)
def hero(ds: str, sha: str, n: int = 8, ncol: int = 4) -> tuple[bytes, bytes, dict]:
    """The natural zoo model's shipped δ, and the first test images clean and with δ, as PNGs."""
    p = models.zoo_model(ds, "natural")
    return experiments.hero_pictures(p.model, models.zoo_delta(ds, "natural"), data.test_set(ds, D.test_size),
                                     float(p.entry["eps"]), n, ncol, data.device())


left, right = st.columns([5, 4], gap="large")
with left:
    st.markdown("**A universal perturbation** is a single pattern δ, the same for every image, that makes a "
                "classifier wrong on most of them. Alg. 2 finds it by gradient ascent on a *clipped* loss, so "
                "images that are already fooled stop pulling on δ:")
    st.latex(r"\max_{\|\delta\|_\infty\le\epsilon}\ \frac1N\sum_{i} \min\big(\ell(f(x_i+\delta),y_i),\ \beta\big)")
    st.markdown("**Universal adversarial training** makes the network robust to it: a min-max game between "
                "the weights and one δ, both updated on every minibatch (Alg. 3), or both from one "
                "backward pass, at the cost of natural training (Alg. 4, *low-cost*):")
    st.latex(r"\min_\theta\ \max_{\|\delta\|_\infty\le\epsilon}\ \frac1N\sum_i \ell\big(f_\theta(x_i+\delta),y_i\big)")
with right:
    if "natural" in zoo and models.zoo_delta(ds, "natural") is not None:
        e = zoo["natural"]
        dpng, gpng, cnt = hero(ds, e["sha256"])
        c1, c2 = st.columns([2, 3])
        c1.image(dpng, caption=f"δ of the natural model, ε = {e['eps']}/255 (grey = 0)", width="stretch")
        c2.image(gpng, caption="Rows 1 and 3: test images and the natural model's predictions. Rows 2 and 4: "
                               "the same images + δ (red = wrong, with the model's confidence).", width="stretch")
        uat = (f" A model trained with UAT (Alg. 3) keeps **{ui.pct(zoo['uat'].get('perturbed_top1'))}** under a δ "
               "built against it in the same way." if "uat" in zoo else "")
        how = ("the strong attack (Alg. 2 refined from the best of many starts)"
               if e.get("perturbation_attack", {}).get("attack") == "strong" else "Alg. 2")
        fixed = (f" For comparison, the strongest *fixed* stripe or checkerboard pattern at the same ε (no "
                 f"optimisation at all) leaves {ui.pct(e['fixed_top1'])}." if e.get("fixed_top1") is not None else "")
        st.markdown(f"The natural model is right on **{ui.pct(e['clean_top1'])}** of the {S.DS_LABEL[ds]} test images "
                    f"and on only **{ui.pct(e.get('perturbed_top1'))}** once this δ, made by {how}, is added to all "
                    f"of them.{fixed}{uat}")

st.divider()
c1, c2 = st.columns([2, 3], gap="large")        # the models' table needs the wider half: six columns
with c1:
    st.subheader("Data in use")
    src = data.cifar_source()
    if ds == "cifar10":
        st.success(f"**CIFAR-10**, read from {src}. Test accuracy is measured on a fixed stratified "
                   f"subset of {D.test_size:,} test images to keep the pages quick.", icon=":material/image:")
    else:
        why = "" if src is None else " (CIFAR-10 is available: switch in the sidebar)"
        st.info(f"**Digits**: scikit-learn's bundled 8x8 handwritten digits, upsampled to 32x32 "
                   f"(1,297 training and 500 test images), the offline fallback{why}. "
                   f"Budgets use ε = 32/255 here. {D.why_eps}", icon=":material/draw:")
        if src is None:
            st.caption("CIFAR-10 is not on this machine: press **Download CIFAR-10** in the sidebar, set "
                       "`UAT_DATA` to a CIFAR-10 folder (ImageFolder with train/ and test/, or a torchvision root) "
                       "or start with `streamlit run app.py -- --data-root DIR`.")
with c2:
    st.subheader(f"Models in use ({ds} zoo)")
    if zoo:
        rows = [{"model": S.ALGO_LABEL.get(a, a), "clean top-1": 100 * e["clean_top1"],
                 "under its own δ": None if e.get("perturbed_top1") is None else 100 * e["perturbed_top1"],
                 "best fixed pattern": None if e.get("fixed_top1") is None else 100 * e["fixed_top1"],
                 "train s": e.get("train_seconds"),
                 "trained on": trained_on(e.get("device")).replace("NVIDIA ", "")} for a, e in zoo.items()]
        st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
            "clean top-1": st.column_config.NumberColumn(format="%.1f%%"),
            "under its own δ": st.column_config.NumberColumn(format="%.1f%%",
                                                             help="The strong universal attack against that model, "
                                                                  "ε as trained, whole test split"),
            "best fixed pattern": st.column_config.NumberColumn(format="%.1f%%",
                                                                help="The baseline: the strongest fixed stripe/"
                                                                     "checkerboard pattern at the same ε"),
            "train s": st.column_config.NumberColumn("train (s)", format="%.0f",
                                                     help="Wall-clock training time on the machine in the next column"),
            "trained on": st.column_config.TextColumn("on", help="Where it was trained (CPU or the GPU's name)")})
        archs = sorted({e["arch"] for e in zoo.values()})
        st.caption(f"{', '.join(archs)} models shipped in `assets/models` with their perturbations "
                   "(`python -m uat_core.zoo list`).")
    else:
        st.error(f"No {ds} models in the zoo yet: build them with `python -m uat_core.zoo build --dataset {ds}`.")

st.divider()
st.subheader("The pages")
for p in PAGES.values():
    if p.summary:
        st.page_link(p.path, label=f"**{p.title}** — {p.summary}", icon=":material/arrow_forward:")
st.caption("Every page opens with a precomputed result; press Run to compute your own. Settings live in the "
           "URL: copy it to share the exact view.")

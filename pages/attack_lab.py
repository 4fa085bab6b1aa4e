"""Universal attack lab: Alg. 2 on one model, live, with every knob of the paper."""
from __future__ import annotations

import math

import streamlit as st

from uat_core import plots
from uat_core.engine.attacks.universal import DEFAULT_STEP
from uat_core.recipes import experiments
from uat_core.engine.export import comparison_grid
from webapp import live, page, ui
from webapp import settings as S
from webapp.state import data, models, results

PAGE = "lab"
P = page.open_page(PAGE,
                   "One perturbation δ, added to **every** image, built by stochastic gradient ascent on a few hundred "
                   "training images (Alg. 2). Set the budget on the left and press **Run**: the accuracy curve and δ "
                   "grow step by step; the test accuracy under δ comes at the end.", "Alg. 2, eq. (3), Figs. 2-3",
                   "Attack settings")
ds, D, d, train, test, sb, picked = P.ds, P.D, P.d, P.train, P.test, P.sb, P.picked

# ---- settings ------------------------------------------------------------------------------------------
norm = sb.radio("Norm", ["linf", "l2"], format_func={"linf": "ℓ∞", "l2": "ℓ2"}.get, horizontal=True,
                **ui.w(PAGE, "norm"))
if norm == "linf":
    eps = P.eps_slider(0)
else:
    eps = sb.slider("ε, ℓ2 radius (0-255 units)", 0, D.eps_l2_max, D.eps_l2, step=5,
                    help="‖δ‖₂ ≤ ε/255 with images in [0, 1] (the engine allows up to 255, a radius of 1).",
                    **ui.w(PAGE, "eps2"))
beta = sb.select_slider("β (clip of the per-image loss)", S.BETAS, d["beta"], format_func=S.fmt_beta,
                        help="min(CE, β): images already fooled stop pulling on δ (eq. 3). ∞ = plain CE.",
                        **ui.w(PAGE, "beta"))
opt = sb.segmented_control("Optimizer", list(S.OPTIMIZERS), default=d["optimizer"], required=True,
                           format_func=lambda o: S.OPT_LABEL[o].split(" ")[0], **ui.w(PAGE, "opt"))
step = sb.number_input("Step size τ (0-255 units; empty = auto)", min_value=0.001, max_value=100000.0, value=None,
                       placeholder=f"auto: {DEFAULT_STEP[opt]:g}·ε = {DEFAULT_STEP[opt] * max(eps, 0):g}",
                       help="PGD/ADAM: about τ per pixel and step. SGD/MSGD: τ per unit gradient.",
                       **ui.w(PAGE, "step"))
epochs = sb.slider("Epochs (passes over the attack set)", 1, 20, d["epochs"], **ui.w(PAGE, "epochs"))
size = sb.select_slider("Attack-set size (training images)", D.attack_sizes, d["attack_size"],
                        **ui.w(PAGE, "size"))
classes = train.classes
target = sb.selectbox("Target class", [None] + list(range(len(classes))),
                      format_func=lambda t: "none (untargeted)" if t is None else f"{t}: {classes[t]}",
                      **ui.w(PAGE, "target"))
seed = sb.number_input("Seed", 0, 10_000, 0, **ui.w(PAGE, "seed"))
strong = sb.toggle("Strong attack (multi-start search)", d["strong"], **ui.w(PAGE, "strong"),
                   help="Screen a bank of fixed stripes and checkerboards and random starts, refine Alg. 2 from the "
                        "best few and from δ = 0 (cosine-decayed steps, the leaders only), keep the best δ. About 2-3× "
                        "the time of plain Alg. 2. Off: the paper's Alg. 2 from δ = 0 with the optimizer above.")

s = P.settings(norm=norm, eps=eps, beta=float(beta), optimizer=opt, step_size=None if step is None else float(step),
               epochs=int(epochs), attack_size=int(size), target=target, seed=int(seed), strong=bool(strong))
want, default = P.refs(s)
steps_planned = s["epochs"] * math.ceil(min(s["attack_size"], len(train)) / 128) * (2 if strong else 1)


make_job = P.job_maker(s, lambda job: not job.result["stopped"], show={"eps": eps, "norm": norm})
if eps == 0:
    sb.warning("ε = 0 leaves the images unchanged: pick ε > 0 to attack.")
P.controls(make_job, s, disabled=picked is None or eps == 0,
           help=f"{steps_planned} steps of Alg. 2{' over several starts' if strong else ''} on "
                f"{min(size, len(train))} images, then {len(test)} test images")
sb.caption(f"{steps_planned} steps · test accuracy on {len(test)} {ds} test images")

with st.expander("How Alg. 2 works", expanded=False):
    st.latex(r"\max_{\|\delta\|_\infty\le\epsilon}\ \frac1N\sum_{i=1}^N \min\big(\ell(f(x_i+\delta),y_i),\ \beta\big)")
    st.markdown("Each step takes a minibatch, computes the gradient of the clipped loss with respect to δ "
                "(weights frozen), takes an ascent step with the chosen optimizer and projects δ back onto the "
                "ε-ball. PGD uses the sign of the gradient: "
                r"$\delta \leftarrow \Pi_\epsilon\big(\delta + \tau\,\mathrm{sign}(\nabla_\delta)\big)$. "
                "A targeted attack instead minimises the loss of the target class on every image.")
    st.markdown("**The strong attack.** The objective has many hills, and δ = 0 sits at the foot of a low one: "
                "on CIFAR-10 ResNets a fixed stripe pattern at ±ε (no optimisation at all) fools more images than "
                "Alg. 2 started at zero. The strong switch first scores a bank of such patterns and random starts "
                "on a few attack images, then runs Alg. 2 from the best few and from zero, keeps only the leaders "
                "after each round, and returns the δ with the highest loss on the attack set. The result always "
                "shows the best fixed pattern beside it: an attack that does not beat it is not worth its time. "
                "The *Why starting points matter* page explores the bank.")

# ---- live run ------------------------------------------------------------------------------------------
def draw(job):
    live.progress_line(job)
    c1, c2 = st.columns([3, 1])
    with c1:
        board = job.state.get("leaderboard")
        if board:
            ui.chart(plots.leaderboard_bars(board, job.state.get("current"),
                                            title="Live: the starts (red = being refined, grey = dropped)"),
                     key="lab_live_board")
        hist = job.state["history"]
        cur = job.state.get("current")
        if cur:                                        # the curve of the start being refined
            hist = [h for h in hist if h.get("start") == cur]
        ui.chart(plots.attack_curve(hist, title="Live: minibatch accuracy and loss"
                                                + (f" of start '{cur}'" if cur else "")), key="lab_live_curve")
    with c2:
        ui.delta_picture(job.state["delta"], job.state["eps"], f"δ after step {job.state.get('step', 0)}",
                         norm=job.state["norm"])


job = live.panel(PAGE, draw)
if job is not None and not job.done:
    st.stop()


# ---- result --------------------------------------------------------------------------------------------
@st.cache_data(show_spinner="Evaluating the shipped perturbation …", max_entries=16)
def shipped_result(ds: str, algo: str, sha: str, test_size: int) -> dict:
    """The zoo model's own shipped δ on the test images (when nothing has been computed yet)."""
    p = models.zoo_model(ds, algo)
    return experiments.shipped(p.model, models.zoo_delta(ds, algo), data.test_set(ds, test_size), p.entry,
                               data.device())


if picked is None:
    st.stop()
shown = results.find(want, default)
shipped = picked.entry is not None and models.zoo_delta(ds, s["model"]) is not None
if shown is None and shipped:
    res = shipped_result(ds, s["model"], picked.entry["sha256"], d["test_size"])
    a = picked.entry.get("perturbation_attack", {})
    how = (f"the strong attack, winning start `{a.get('start')}`" if a.get("attack") == "strong" else "Alg. 2")
    st.info(f"Showing the perturbation shipped with this zoo model ({how}, ε = {a.get('eps')}, β = {a.get('beta')}, "
            f"{a.get('epochs')} epochs on {a.get('attack_size')} images). Press **Run** to build one live.",
            icon=":material/inventory_2:")
    shown_key, ss = S.Ref(PAGE, ds, f"shipped:{picked.tag}", {}).key, {}
elif shown is None:
    st.info("No result for these settings yet: press **Run**.")
    st.stop()
else:
    res, shown_key, ss = shown.result, shown.key, shown.settings
    ui.shown_note(shown)
    if res.get("stopped"):
        st.warning(f"This run was stopped after {res['steps']} steps: the numbers are for the partial δ.")

res_eps = float(ss.get("eps", eps)) if ss else float(picked.entry.get("eps", eps))
res_norm = ss.get("norm", "linf")
m = res["metrics"]
st.subheader("Result on the test images")
left, right = st.columns([3, 2], gap="large")
with left:
    ui.attack_metrics(m, res.get("seconds"), res.get("steps"))
    fx = res.get("fixed")
    if fx:
        beats = m["perturbed_top1"] < fx["perturbed_top1"]
        made = {"strong": "strong attack", "alg2": "Alg. 2 from δ = 0"}.get(res.get("attack", "alg2"), "attack")
        st.metric("Best fixed pattern (baseline)", ui.pct(fx["perturbed_top1"]),
                  f"{100 * (m['perturbed_top1'] - fx['perturbed_top1']):+.1f} pp: {made} vs this baseline",
                  delta_color="inverse", border=True,
                  help=f"Test accuracy under the strongest fixed pattern of the bank (`{fx['name']}`, no "
                       "optimisation, chosen on the attack images). An attack should leave less.")
        if not beats:
            st.warning(f"This δ ({made}) does **not** beat the best fixed pattern `{fx['name']}`: a stripe at ±ε "
                       "fools at least as many test images. Try the strong attack.", icon=":material/warning:")
    if "target_rate" in m:
        st.metric("Target rate", ui.pct(m["target_rate"]), border=True, help="Share of test images (outside the "
                  "target class) now classified as the target")
with right:
    snaps = res.get("snapshots") or [(0, res["delta"])]
    steps_avail = [int(st_) for st_, _ in snaps]
    if len(snaps) > 1:
        frame = st.select_slider("Frame: δ after step", steps_avail, steps_avail[-1],
                                 key=f"lab_frame_{abs(hash(shown_key)) % 10 ** 8}_{len(snaps)}",
                                 help="Scrub through the snapshots of δ taken during the run")
        delta_at = dict((int(a), b) for a, b in snaps)[frame]
    else:
        frame, delta_at = steps_avail[-1], res["delta"]
    ui.delta_picture(delta_at, res_eps, f"δ after step {frame} (grey = 0, black = −ε, white = +ε)", size=224,
                     norm=res_norm)

c1, c2 = st.columns([3, 2], gap="large")
with c1:
    if res["history"]:
        ui.chart(plots.attack_curve(res["history"]), key="lab_curve")
    st.markdown("**Clean vs perturbed test images**")
    pv = res.get("preview")
    if pv:
        idx = pv.get("idx", list(range(pv["n"])))
        grid = comparison_grid(test.float_images(idx), res["delta"], classes, pv["clean_pred"],
                               pv["pert_pred"], test.labels[idx], pv["pert_conf"], scale=3, ncol=8)
        st.image(grid, caption="Rows 1 and 3: clean test images with the predicted label. Rows 2 and 4: the same "
                               "images + δ, with the predicted label and its confidence. Red = wrong.",
                 width="stretch")
with c2:
    ui.chart(plots.per_class_bars(classes, m["per_class_clean"], m["per_class_perturbed"],
                                  "Per-class test accuracy, clean vs with δ"), key="lab_classes")

st.subheader("Downloads")
stem = f"delta_{ds}_{ss.get('model', s['model'])}_eps{res_eps:g}"
ui.downloads(shown_key, ss, res, ui.picture_eps(res["delta"], res_eps, res_norm), stem)

"""Small drawing helpers shared by the pages (Streamlit; figures and pictures come from uat_core)."""
from __future__ import annotations

import json

import streamlit as st
import torch

from uat_core.engine import export
from uat_core.engine.errors import UATError
from uat_core.engine.fileio import jsonable

from . import settings as S
from .state import models, uploads
from .state.models import Picked
from .state.results import Shown


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def w(page: str, name: str) -> dict:
    """Keyword arguments that make a widget part of the shared link and keep it across page switches."""
    return {"key": f"{page}_{name}", "bind": "query-params", "persist_state": "session"}


def headline(natural: dict | None) -> str:
    """The home page's one line, in the natural zoo model's own numbers: its test accuracy, clean and under its
    shipped δ (so the words can never claim more than the figures below them show)."""
    clean, under = (natural or {}).get("clean_top1"), (natural or {}).get("perturbed_top1")
    if clean is None or under is None:
        return "One tiny pattern, the same for every image, can fool a classifier, and how to train it away."
    return (f"One tiny pattern, the same for every image, takes a classifier from {pct(clean)} right to "
            f"{pct(under)}, and how to train it away.")


def header(title: str, intro: str, paper: str | None = None) -> None:
    st.title(title)
    if paper:
        st.caption(f"{paper} · Shafahi et al., *Universal Adversarial Training*, AAAI 2020 "
                   "([arXiv:1811.11304](https://arxiv.org/abs/1811.11304))")
    st.markdown(intro)


def chart(fig, key: str, where=None) -> None:
    """A uat_core.plots figure, with room between its title and the legend above the plot."""
    where = where or st
    fig.update_layout(title=dict(y=0.98, yanchor="top"), margin=dict(t=90),
                      legend=dict(y=1.02, yanchor="bottom"))
    where.plotly_chart(fig, key=key)


def picture_eps(delta: torch.Tensor, eps: float, norm: str = "linf") -> float:
    """The ε (pixel units) of the δ/(2ε)+0.5 picture scale: ε itself for ℓ∞, max |δ| for ℓ2."""
    if norm == "linf":
        return eps / 255.0
    return max(float(delta.abs().max()), 1e-6)


def delta_picture(delta: torch.Tensor, eps: float, caption: str | None = None, where=None, size: int = 192,
                  norm: str = "linf") -> None:
    """δ as a picture (grey = 0, black = −ε, white = +ε), about ``size`` pixels wide."""
    where = where or st
    d = delta.detach().cpu().float()
    scale = max(1, size // d.shape[-1])
    where.image(export.delta_image(d, picture_eps(d, eps, norm), scale), caption=caption)


def model_select(page: str, ds: str, where=None, label: str = "Model", upload: bool = True,
                 default: str = "natural") -> Picked | None:
    """A zoo model, a model trained on the training page in this session, or an uploaded checkpoint."""
    where = where or st.sidebar
    zoo = models.zoo(ds)
    session = models.session_models(ds)
    options = list(zoo) + list(session) + (["upload"] if upload else [])
    if not options:
        where.error(f"No {ds} models in the zoo yet (assets/models/manifest.json).")
        return None
    if not zoo:
        where.warning(f"No {ds} zoo models yet: upload a checkpoint, or train one on the training page.")

    def fmt(o: str) -> str:                   # also the value in the URL: keep it short and stable
        if o == "upload":
            return "Upload a checkpoint …"
        if o in zoo:
            return S.ALGO_LABEL.get(o, o)
        return f"{session[o].label} (trained here)"

    choice = where.selectbox(label, options, index=options.index(default) if default in options else 0,
                             format_func=fmt, help="Zoo models ship with the app (assets/models). Models you "
                             "train on the training page appear here for this browser session only.",
                             **w(page, "model"))
    if choice in zoo:
        e = zoo[choice]
        where.caption(f"{e['arch']}, {pct(e['clean_top1'])} clean test accuracy, "
                      f"{pct(e.get('perturbed_top1'))} under its shipped δ (ε = {e['eps']})")
    if choice in zoo:
        return models.zoo_model(ds, choice)
    if choice in session:
        return session[choice]
    f = where.file_uploader(f"A UAT Lab checkpoint for {ds} (.pt, ≤ {uploads.MAX_UPLOAD_MB} MB)", type=["pt", "pth"],
                            key=f"{page}_upload", max_upload_size=uploads.MAX_UPLOAD_MB,
                            help="Written by `python -m uat_core train`. It is read with torch.load("
                                 "weights_only=True): nothing in it runs as code.")
    if f is None:
        where.info("Choose a file, or pick a zoo model.")
        return None
    try:
        return uploads.load_upload(f.getvalue(), ds)
    except UATError as e:
        where.error(f"This file can't be used: {e}")
        return None


def shown_note(shown: Shown, run_label: str = "Run") -> None:
    """Say plainly what the result on screen is when it is not the one for the current settings."""
    if shown.kind == "latest":
        st.info(f"Showing your last run ({S.describe(_readable(shown.settings))}). Press **{run_label}** to "
                "compute the current settings.", icon=":material/history:")
    elif shown.kind == "default":
        st.info(f"Showing the precomputed result for the default settings ({S.describe(_readable(shown.settings))}). "
                f"Press **{run_label}** to compute the current settings.", icon=":material/inventory_2:")


def _readable(s: dict) -> dict:
    """The settings worth a caption, in the order of their names."""
    return {k: v for k, v in sorted(s.items()) if k != "test_size"}


def attack_metrics(m: dict, seconds: float | None = None, steps: int | None = None, where=None) -> None:
    """Clean / perturbed top-1 and top-5, fooling ratio and seconds: two rows of st.metric."""
    where = where or st
    r1, r2 = where.columns(3), where.columns(3)
    r1[0].metric("Clean top-1", pct(m["clean_top1"]), border=True)
    r1[1].metric("Perturbed top-1", pct(m["perturbed_top1"]),
                 f"{100 * (m['perturbed_top1'] - m['clean_top1']):+.1f} pp", border=True,
                 help="Test accuracy with the same δ added to every test image")
    r1[2].metric("Fooling ratio", pct(m["fooling_ratio"]), border=True,
                 help="Share of test images whose top-1 prediction changes when δ is added")
    r2[0].metric("Clean top-5", pct(m["clean_top5"]), border=True)
    r2[1].metric("Perturbed top-5", pct(m["perturbed_top5"]),
                 f"{100 * (m['perturbed_top5'] - m['clean_top5']):+.1f} pp", border=True)
    if seconds is not None:
        r2[2].metric("Seconds", f"{seconds:.1f}", border=True,
                     help=f"Computation time of the attack{f' ({steps} steps)' if steps else ''}, "
                          "excluding the time the page spends drawing")


@st.cache_data(show_spinner=False, max_entries=32)
def _files(key: str, ident: int, _result: dict, eps_px: float, _settings: dict) -> dict:
    """The download files of the result ``_result`` stored under ``key`` (which names ``_settings``)."""
    d = _result["delta"]
    snaps = _result.get("snapshots") or [(0, d)]
    meta = {"settings": dict(sorted(_settings.items())), "metrics": _result.get("metrics"),
            "seconds": _result.get("seconds"), "steps": _result.get("steps"), "stopped": _result.get("stopped"),
            "config": _result.get("config")}
    return {"png": export.png_bytes(export.delta_image(d, eps_px, 8)), "gif": export.gif_bytes(snaps, eps_px),
            "npy": export.npy_bytes(d), "pt": export.pt_bytes(d),
            "json": json.dumps(jsonable(meta), indent=2, allow_nan=False).encode()}


def downloads(key: str, settings: dict, result: dict, eps_px: float, stem: str, where=None) -> None:
    """δ as PNG, GIF (its evolution), .npy and .pt, and the metrics and ``settings`` (those of ``result``) as JSON."""
    where = where or st
    f = _files(key, id(result), result, eps_px, settings)
    cols = where.columns(5)
    spec = [("png", "PNG", "image/png"), ("gif", "GIF", "image/gif"), ("npy", ".npy", "application/octet-stream"),
            ("pt", ".pt", "application/octet-stream"), ("json", "metrics JSON", "application/json")]
    for c, (ext, label, mime) in zip(cols, spec):
        name = f"{stem}_metrics.json" if ext == "json" else f"{stem}.{ext}"
        c.download_button(label, f[ext], file_name=name, mime=mime, key=f"dl_{ext}", on_click="ignore",
                          icon=":material/download:", width="stretch")

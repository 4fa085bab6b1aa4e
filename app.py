"""UAT Lab: the Streamlit demonstrator of *Universal Adversarial Training* (Shafahi et al., AAAI 2020).

    streamlit run app.py                              # digits offline, CIFAR-10 if UAT_DATA is set
    streamlit run app.py -- --data-root ../shared/data/cifar10-jpeg

The pages live in ``pages/``; their shared helpers in ``webapp/``; the engine in ``uat_core/``.
Every setting is part of the URL, so a copied link reproduces the view.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st     # streamlit puts this file's folder on sys.path; `pip install -e .` installs the rest
import torch

ROOT = Path(__file__).resolve().parent


def _configure() -> None:
    """Once per process: ``--data-root`` and the number of CPU threads torch may use."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--data-root", default=None)
    args, _ = ap.parse_known_args(sys.argv[1:])
    if args.data_root:
        os.environ["UAT_DATA"] = args.data_root
    # One thread per two cores: the app serves several visitors, and oversubscribed OpenMP threads on a
    # busy machine make small attack steps many times slower. UAT_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("UAT_THREADS", max(1, (os.cpu_count() or 2) // 2))))


if not st.session_state.get("_configured"):
    _configure()
    st.session_state["_configured"] = True

st.set_page_config(page_title="UAT Lab", page_icon=":material/shield:", layout="wide",
                   menu_items={"About": "UAT Lab — universal perturbations and universal adversarial training "
                                        "(Shafahi et al., AAAI 2020, arXiv:1811.11304)."})

from webapp import cifar, live, state  # noqa: E402

# slot -> (file, title, url, icon). The URL is the file's stem: before the first script run Streamlit
# resolves a deep link against the files in pages/, and only then st.navigation takes over.
PAGES = {
    "home": ("pages/home.py", "Home", "home", ":material/home:"),
    "lab": ("pages/attack_lab.py", "Universal attack lab", "attack_lab", ":material/science:"),
    "beta": ("pages/beta_clipping.py", "β clipping", "beta_clipping", ":material/content_cut:"),
    "race": ("pages/optimizer_race.py", "Optimizer race", "optimizer_race", ":material/sprint:"),
    "uat": ("pages/uat_training.py", "Universal adversarial training", "uat_training", ":material/shield:"),
    "idf": ("pages/idf_vs_alg2.py", "iDeepFool vs Alg. 2", "idf_vs_alg2", ":material/timer:"),
    "size": ("pages/data_size.py", "How much data", "data_size", ":material/dataset:"),
    "bank": ("pages/starting_points.py", "Why starting points matter", "starting_points", ":material/grid_on:"),
    "transfer": ("pages/transfer.py", "Transfer", "transfer", ":material/swap_horiz:"),
    "why": ("pages/vulnerability.py", "Why some models fall", "vulnerability", ":material/compare:"),
}
PAGE_PREFIXES = tuple(f"{slot}_" for slot in PAGES if slot != "home")


def _page(slot: str) -> st.Page:
    f, title, url, icon = PAGES[slot]
    return st.Page(f, title=title, url_path=url, icon=icon, default=slot == "home")


def _reset_page_settings() -> None:
    """A new dataset has other defaults (ε, sizes): forget every page's settings and latest results."""
    for k in list(st.session_state):
        if isinstance(k, str) and k.startswith(PAGE_PREFIXES):
            del st.session_state[k]
    st.session_state.pop("_latest", None)


nav = st.navigation({
    "Overview": [_page("home")],
    "Attacking: Alg. 2": [_page("lab"), _page("bank"), _page("beta"), _page("race"), _page("idf"), _page("size")],
    "Defending: Alg. 3 and 4": [_page("uat"), _page("transfer")],
    "What makes a model vulnerable": [_page("why")],
})

with st.sidebar:
    options = state.available_datasets()
    default = state.default_dataset()
    # shown as their plain names: a bound widget puts what it shows into the URL, so ?dataset=digits works
    st.selectbox("Dataset", options, index=options.index(default) if default in options else 0,
                 key="dataset", bind="query-params", persist_state="session", on_change=_reset_page_settings,
                 help="digits: scikit-learn's 8×8 digits upscaled to 1×32×32 (offline). cifar10: 3×32×32, appears "
                      "when its data is on this machine (UAT_DATA, --data-root, or the Download button below). "
                      "A link with ?dataset=digits or ?dataset=cifar10 opens that dataset.")
    cifar.offer(options)        # without CIFAR-10: its download button and progress bar

current = next((slot for slot, (f, title, url, icon) in PAGES.items() if nav.url_path == url), "home")
live.background(current, {slot: p[1] for slot, p in PAGES.items()})
nav.run()

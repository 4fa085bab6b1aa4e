"""UAT Lab: the Streamlit demonstrator of *Universal Adversarial Training* (Shafahi et al., AAAI 2020).

    streamlit run app.py                              # digits offline, CIFAR-10 if UAT_DATA is set
    streamlit run app.py -- --data-root ../shared/data/cifar10-jpeg

The pages live in ``pages/``, each described once in ``webapp/pages_spec.py`` (the navigation below is built
from it); their shared helpers in ``webapp/``; the engine in ``uat_core/``.
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

from webapp import cifar, live  # noqa: E402
from webapp.pages_spec import PAGES, PageSpec  # noqa: E402
from webapp.state import data  # noqa: E402

HOME = next(iter(PAGES))                                # the first page is the default one
PAGE_PREFIXES = tuple(f"{p}_" for p in PAGES if p != HOME)


def _page(spec: PageSpec) -> st.Page:
    # The URL is the file's stem: before the first script run Streamlit resolves a deep link against the files
    # in pages/, and only then st.navigation takes over.
    return st.Page(spec.path, title=spec.title, url_path=spec.url, icon=spec.icon, default=spec.id == HOME)


def _reset_page_settings() -> None:
    """A new dataset has other defaults (ε, sizes): forget every page's settings and latest results."""
    for k in list(st.session_state):
        if isinstance(k, str) and k.startswith(PAGE_PREFIXES):
            del st.session_state[k]
    st.session_state.pop("_latest", None)


sections: dict[str, list[st.Page]] = {}                 # the navigation: the pages by section, in their order
for spec in PAGES.values():
    sections.setdefault(spec.section, []).append(_page(spec))
nav = st.navigation(sections)

with st.sidebar:
    options = data.available_datasets()
    default = data.default_dataset()
    # shown as their plain names: a bound widget puts what it shows into the URL, so ?dataset=digits works
    st.selectbox("Dataset", options, index=options.index(default) if default in options else 0,
                 key="dataset", bind="query-params", persist_state="session", on_change=_reset_page_settings,
                 help="digits: scikit-learn's 8×8 digits upscaled to 1×32×32 (offline). cifar10: 3×32×32, appears "
                      "when its data is on this machine (UAT_DATA, --data-root, or the Download button below). "
                      "A link with ?dataset=digits or ?dataset=cifar10 opens that dataset.")
    cifar.offer(options)        # without CIFAR-10: its download button and progress bar

current = next((p.id for p in PAGES.values() if p.url == nav.url_path), HOME)
live.background(current, {p.id: p.title for p in PAGES.values()})
nav.run()

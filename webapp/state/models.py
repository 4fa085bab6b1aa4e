"""Which models: the zoo's and their δs (cached once per process, frozen, shared by every session), the models
trained live on the training page (this session only) and the vulnerability study's pair."""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
import torch

from uat_core.engine.errors import UATError
from uat_core.engine.models import freeze
from uat_core.zoo import ZOO_DIR, list_models, load_zoo_model, load_zoo_perturbation, natural_twin

from .. import settings as S
from .data import device


def zoo(ds: str) -> dict[str, dict]:
    """Manifest entries of ``ds`` by algorithm, in the paper's order."""
    return S.paper_order({e["algorithm"]: e for e in list_models(ds) if (ZOO_DIR / e["file"]).is_file()})


@st.cache_resource(show_spinner="Loading the model …", max_entries=16)
def _zoo_model(name: str, sha: str):
    model, meta = load_zoo_model(name, device=device())
    return freeze(model), meta                  # shared by every session: frozen once, never toggled


@st.cache_resource(show_spinner=False, max_entries=32)
def _zoo_delta(name: str, sha: str) -> torch.Tensor | None:
    try:
        return load_zoo_perturbation(name)
    except UATError:
        return None


@dataclass
class Picked:
    """A model chosen on a page."""
    model: torch.nn.Module
    tag: str                # the cache-key part naming the model: zoo:<name>:<sha12> | upload:<sha12> | session:...
    label: str              # for people
    private: bool           # uploaded or trained in this session: results stay in the session
    entry: dict | None = None   # the zoo manifest entry, if any


def zoo_model(ds: str, algo: str) -> Picked:
    e = zoo(ds)[algo]
    model, _ = _zoo_model(e["name"], e["sha256"])
    return Picked(model, S.zoo_tag(e), S.ALGO_LABEL.get(algo, algo), False, e)


def zoo_delta(ds: str, algo: str) -> torch.Tensor | None:
    e = zoo(ds).get(algo)
    return None if e is None else _zoo_delta(e["name"], e.get("perturbation_sha256", ""))


def study_pair(ds: str) -> tuple[dict, dict] | None:
    """(the zoo's natural model, the shipped study model nearest to it in clean accuracy) of ``ds``
    (``zoo.natural_twin``), or None where the study has shipped no model for ``ds``."""
    return natural_twin(ds)


def entry_model(e: dict) -> tuple[torch.nn.Module, torch.Tensor | None]:
    """A manifest entry's model (frozen, shared) and its shipped δ."""
    return _zoo_model(e["name"], e["sha256"])[0], _zoo_delta(e["name"], e.get("perturbation_sha256", ""))


def session_models(ds: str) -> dict[str, Picked]:
    """Models trained live on the training page in this session."""
    return st.session_state.setdefault("_session_models", {}).get(ds, {})


def add_session_model(ds: str, name: str, model, label: str) -> None:
    st.session_state.setdefault("_session_models", {}).setdefault(ds, {})[name] = Picked(
        model, f"session:{name}:{id(model)}", label, True)

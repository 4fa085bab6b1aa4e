"""One page, one spec: every page of the app described once, here (no Streamlit in here).

A :class:`PageSpec` holds what the rest of the app needs to know about a page: its id (the one name it goes
by: widget keys ``<id>_eps``, cache keys, its job and latest result in the session), its file under
``pages/``, its title, icon and navigation section (app.py), its settings and their defaults per dataset,
the experiment it runs (:func:`page_job`), the cost of that experiment (:func:`passes`, :func:`estimate`)
and how ``python -m webapp.precompute`` makes the result it opens with. :data:`PAGES` lists them in the
order the navigation shows them.

Each page's block below is its settings (a ``TypedDict``: at run time a plain dict, which is what the URL,
the cache keys and the engine's experiments take), its defaults, its experiment and its cost.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NotRequired, TypedDict

import torch

from uat_core.engine.data import ImageData, load_dataset
from uat_core.recipes import experiments as X
from uat_core.zoo import RUNS, load_zoo_model, load_zoo_perturbation

from . import settings as S
from .budget import (CHANNELS, EVAL, IDF_PASSES_PER_IMAGE, Counts, Estimate, bank_size, baseline_passes,
                     for_passes, strong_passes, train_passes)
from .jobs import Job, JobInputs, Start

# app.py's navigation sections, in their order
OVERVIEW = "Overview"
ATTACKING = "Attacking: Alg. 2"
DEFENDING = "Defending: Alg. 3 and 4"
VULNERABLE = "What makes a model vulnerable"


@dataclass
class Shipping:
    """What ``python -m webapp.precompute`` hands a page's ``ship`` to make the page's shipped result."""
    ds: str
    entries: dict[str, dict]         # the zoo's manifest entries of ``ds`` by algorithm, in the paper's order
    train: ImageData
    model: Any                       # the natural zoo model
    extras: dict                     # the file's extras (read and updated: the training page's histories)
    log: Callable[[str], None] = print

    def test(self, size: int) -> ImageData:
        """The pages' fixed stratified test subset of ``size`` images."""
        return load_dataset(self.ds, "test", progress=False).subset(size, seed=0)


# A page's shipped run: (its settings, the model tag of its key, the job that computes it), or None when the
# page ships only extras.
Shipped = tuple[dict, str, Job] | None


@dataclass(frozen=True)
class PageSpec:
    id: str                          # the page's one id (see the module docstring)
    file: str                        # its file in pages/
    title: str                       # in the navigation, the links and the toasts
    icon: str                        # a Streamlit icon
    section: str                     # the navigation's group
    summary: str = ""                # the home page's line about it
    heading: str = ""                # the page's own title, when it is not ``title``
    defaults: Callable[[str], Mapping[str, Any]] | None = None     # dataset -> default settings (None: no settings)
    experiment: Callable[[Any, JobInputs], Start] | None = None    # (settings, inputs) -> the experiment it runs
    cost: Callable[[Any, Counts], float] | None = None             # (settings, counts) -> image passes
    ship: Callable[[str, Shipping], Shipped] | None = None         # (id, context) -> its precomputed result

    @property
    def path(self) -> str:
        """Its file, relative to the repository root (what st.Page and st.page_link take)."""
        return f"pages/{self.file}"

    @property
    def url(self) -> str:
        """Its URL path: the file's stem (a deep link resolves against pages/ before app.py's first run)."""
        return Path(self.file).stem

    @property
    def h1(self) -> str:
        return self.heading or self.title


def _per(ds: str, digits, cifar10):
    return digits if ds == "digits" else cifar10


class AttackSettings(TypedDict):
    """What every page that attacks a chosen model has."""
    model: str                       # the zoo algorithm, a session model's name or "upload"
    eps: int                         # 0-255 units
    test_size: int


def _attack_base(ds: str) -> AttackSettings:
    D = S.DATASET[ds]
    return {"model": "natural", "eps": D.eps, "test_size": D.test_size}


def _ship_on_natural(page: str, ctx: Shipping) -> Shipped:
    """The page's defaults against the natural zoo model (every page that attacks one model)."""
    s = defaults(page, ctx.ds)
    job = page_job(page, s, ctx.train, ctx.test(s["test_size"]), model=ctx.model)
    return s, S.zoo_tag(ctx.entries["natural"]), job


HOME = PageSpec("home", "home.py", "Home", ":material/home:", OVERVIEW)


# ---- Universal attack lab: Alg. 2 with every knob ---------------------------------------------------------

class LabSettings(AttackSettings):
    norm: str                        # "linf" | "l2"
    beta: float
    optimizer: str
    step_size: float | None          # None: the optimizer's default
    epochs: int
    attack_size: int
    target: int | None
    seed: int
    strong: bool                     # the multi-start strong attack instead of plain Alg. 2


def _lab_defaults(ds: str) -> LabSettings:
    return {**_attack_base(ds), "norm": "linf", "beta": 9.0, "optimizer": "pgd", "step_size": None, "epochs": 5,
            "attack_size": _per(ds, 500, 2000), "target": None, "seed": 0, "strong": False}


def _lab_experiment(s: LabSettings, i: JobInputs) -> Start:
    attack_set, cfg = i.train.subset(s["attack_size"], seed=s["seed"]), X.lab_config(dict(s), len(i.train))
    method = "strong" if s.get("strong") else "alg2"
    return lambda p: X.attack(p, i.model, attack_set, i.test, cfg, method, i.device)


def _lab_cost(s: LabSettings, n: Counts) -> float:
    if s.get("strong"):
        return strong_passes(s["epochs"], n.size(s), n.channels) + n.evals(s)
    return s["epochs"] * n.size(s) + baseline_passes(n.size(s), n.channels) + n.evals(s)


LAB = PageSpec("lab", "attack_lab.py", "Universal attack lab", ":material/science:", ATTACKING,
               "build δ live with every knob: ε, β, optimizer, norm, target, and the strong attack",
               defaults=_lab_defaults, experiment=_lab_experiment, cost=_lab_cost, ship=_ship_on_natural)


# ---- Why starting points matter: the bank of fixed patterns ----------------------------------------------

class BankSettings(AttackSettings):
    beta: float
    random: int                      # random-sign and random-uniform draws added to the bank, of each
    seed: int


def _bank_defaults(ds: str) -> BankSettings:
    return {**_attack_base(ds), "test_size": 200, "beta": 9.0, "random": 4, "seed": 0}  # ~400 patterns × 200 images


def _bank_experiment(s: BankSettings, i: JobInputs) -> Start:
    return lambda p: X.bank(p, i.model, i.test, dict(s), i.device)


def _bank_cost(s: BankSettings, n: Counts) -> float:
    patterns = n.n_patterns if n.n_patterns is not None else bank_size(n.channels) + 2 * s.get("random", 0)
    return max(1, patterns) * n.test(s) * EVAL


BANK = PageSpec("bank", "starting_points.py", "Why starting points matter", ":material/grid_on:", ATTACKING,
                "fixed stripes and checkerboards, and why δ = 0 is a bad start",
                defaults=_bank_defaults, experiment=_bank_experiment, cost=_bank_cost, ship=_ship_on_natural)


# ---- β clipping (Fig. 5): a sweep of attacks over β ------------------------------------------------------

class BetaSettings(AttackSettings):
    betas: list[float]
    repeats: int                     # random attack subsets per β
    attack_size: int
    epochs: int
    optimizer: str


def _beta_defaults(ds: str) -> BetaSettings:
    return {**_attack_base(ds), "betas": [1.0, 2.0, 3.0, 5.0, 9.0, 15.0, S.INF], "repeats": _per(ds, 3, 2),
            "attack_size": _per(ds, 500, 1000), "epochs": _per(ds, 5, 4), "optimizer": "pgd"}


def _beta_experiment(s: BetaSettings, i: JobInputs) -> Start:
    points = X.beta_points(dict(s))
    return lambda p: X.sweep(p, i.model, i.train, i.test, points, i.device)


def _beta_cost(s: BetaSettings, n: Counts) -> float:
    runs = s["repeats"] * len(s["betas"])
    return runs * (s["epochs"] * n.size(s) + 2 * n.test(s) * EVAL)


BETA = PageSpec("beta", "beta_clipping.py", "β clipping", ":material/content_cut:", ATTACKING,
                "does clipping the loss make a stronger attack? (Fig. 5)",
                defaults=_beta_defaults, experiment=_beta_experiment, cost=_beta_cost, ship=_ship_on_natural)


# ---- Optimizer race (Figs. 2-3): SGD, MSGD, ADAM and PGD side by side ------------------------------------

class RaceSettings(AttackSettings):
    epochs: int
    attack_size: int
    beta: float
    seed: int


def _race_defaults(ds: str) -> RaceSettings:
    return {**_attack_base(ds), "epochs": 5, "attack_size": _per(ds, 500, 1000), "beta": 9.0, "seed": 0}


def _race_experiment(s: RaceSettings, i: JobInputs) -> Start:
    attack_set = i.train.subset(s["attack_size"], seed=s["seed"])
    return lambda p: X.race(p, i.model, attack_set, i.test, dict(s), i.device)


def _race_cost(s: RaceSettings, n: Counts) -> float:
    return 4 * (s["epochs"] * n.size(s) + 2 * n.test(s) * EVAL)


RACE = PageSpec("race", "optimizer_race.py", "Optimizer race", ":material/sprint:", ATTACKING,
                "SGD, MSGD, ADAM and PGD on the same data (Figs. 2-3)",
                defaults=_race_defaults, experiment=_race_experiment, cost=_race_cost, ship=_ship_on_natural)


# ---- iDeepFool vs Alg. 2 (Table 2) ------------------------------------------------------------------------

class IdfSettings(AttackSettings):
    attack_size: int                 # both methods' images
    idf_passes: int
    alg2_epochs: int
    idf_batch: int


def _idf_defaults(ds: str) -> IdfSettings:
    return {**_attack_base(ds), "attack_size": _per(ds, 128, 64), "idf_passes": 2, "alg2_epochs": 20,
            "idf_batch": 8}


def _idf_experiment(s: IdfSettings, i: JobInputs) -> Start:
    attack_set = i.train.subset(s["attack_size"], seed=0)
    return lambda p: X.idf_and_alg2(p, i.model, attack_set, i.test, dict(s), i.device)


def _idf_cost(s: IdfSettings, n: Counts) -> float:
    return n.size(s) * (s["idf_passes"] * IDF_PASSES_PER_IMAGE + s["alg2_epochs"]) + 4 * n.test(s) * EVAL


IDF = PageSpec("idf", "idf_vs_alg2.py", "iDeepFool vs Alg. 2", ":material/timer:", ATTACKING,
               "the older attack against the new one (Table 2)",
               defaults=_idf_defaults, experiment=_idf_experiment, cost=_idf_cost, ship=_ship_on_natural)


# ---- How much data (Fig. 6): a sweep of attacks over the attack-set size ---------------------------------

class SizeSettings(AttackSettings):
    sizes: list[int]
    repeats: int                     # random subsets per size
    steps: int                       # per attack


def _size_defaults(ds: str) -> SizeSettings:
    return {**_attack_base(ds), "sizes": _per(ds, [25, 50, 100, 250, 500, 1297], [50, 100, 250, 500, 1000, 2000]),
            "repeats": 2, "steps": _per(ds, 20, 40)}


def _size_experiment(s: SizeSettings, i: JobInputs) -> Start:
    points = X.size_points(dict(s), len(i.train))
    return lambda p: X.sweep(p, i.model, i.train, i.test, points, i.device)


def _size_cost(s: SizeSettings, n: Counts) -> float:
    batch = 128
    runs = s["repeats"] * len(s["sizes"])
    return runs * (s["steps"] * batch + 2 * n.test(s) * EVAL)


SIZE = PageSpec("size", "data_size.py", "How much data", ":material/dataset:", ATTACKING,
                "how many images an attack needs (Fig. 6)", heading="How much data does a universal attack need?",
                defaults=_size_defaults, experiment=_size_experiment, cost=_size_cost, ship=_ship_on_natural)


# ---- Universal adversarial training (Alg. 3/4, Table 1): train live, then attack -------------------------

class UatSettings(TypedDict):
    eps: int
    test_size: int
    algorithms: list[str]
    epochs: int
    train_size: int
    delta_rule: str                  # "fgsm" | "sgd" | "adam"
    attack_size: int                 # the robustness attack's images ...
    attack_epochs: int               # ... and epochs
    seed: int


def _uat_defaults(ds: str) -> UatSettings:
    D = S.DATASET[ds]
    return {"eps": D.eps, "test_size": D.test_size, "algorithms": ["natural", "uat", "lowcost", "uat_pool",
                                                                    "lowcost_pool"],
            "epochs": _per(ds, 8, 1), "train_size": _per(ds, 1297, 5000), "delta_rule": "fgsm",
            "attack_size": _per(ds, 500, 1000), "attack_epochs": _per(ds, 5, 3), "seed": 0}


def _uat_experiment(s: UatSettings, i: JobInputs) -> Start:
    return lambda p: X.train_and_attack(p, i.arch, i.train, i.test, dict(s), i.device)


def _uat_cost(s: UatSettings, n: Counts) -> float:
    train, attack = n.size(s, "train_size"), n.size(s, "attack_size")
    per_model = [s["epochs"] * train * train_passes(algo) for algo in s["algorithms"]]
    attacks = len(s["algorithms"]) * (strong_passes(s["attack_epochs"], attack, n.channels) + n.evals(s))
    return sum(per_model) + attacks


def _zoo_histories(entries: dict[str, dict]) -> dict:
    """The training histories of the zoo models (from their training runs in runs/zoo, if present)."""
    out = {}
    for algo, e in entries.items():
        run = RUNS / e["name"]
        mfile = run / "metrics.json"
        if not mfile.is_file():
            continue
        hist = json.loads(mfile.read_text()).get("history", [])
        item = {"sha": e["sha256"], "history": hist}
        if (run / "delta.pt").is_file():
            d = torch.load(run / "delta.pt", map_location="cpu", weights_only=True)
            if isinstance(d, torch.Tensor):
                item["train_delta"] = d.float()
        out[algo] = item
    return out


def _ship_histories(page: str, ctx: Shipping) -> Shipped:
    """The training page opens on the zoo itself: ship the zoo models' training histories, no run."""
    # keep the histories of models whose training run is not on this machine (same sha: same model)
    kept = {a: it for a, it in ctx.extras.get("uat_histories", {}).items()
            if a in ctx.entries and it.get("sha") == ctx.entries[a]["sha256"]}
    ctx.extras["uat_histories"] = {**kept, **_zoo_histories(ctx.entries)}
    ctx.log(f"{page}: training histories of {', '.join(ctx.extras['uat_histories']) or 'no'} zoo models")
    return None


UAT = PageSpec("uat", "uat_training.py", "Universal adversarial training", ":material/shield:", DEFENDING,
               "train natural, UAT and low-cost live (Table 1)",
               defaults=_uat_defaults, experiment=_uat_experiment, cost=_uat_cost, ship=_ship_histories)


# ---- Transfer: every zoo model's δ on every zoo model ----------------------------------------------------

class TransferSettings(TypedDict):
    test_size: int
    models: NotRequired[list[str]]   # the zoo algorithms in the matrix (the page adds them to the defaults)


def _transfer_defaults(ds: str) -> TransferSettings:
    return {"test_size": S.DATASET[ds].test_size}


def _transfer_experiment(s: TransferSettings, i: JobInputs) -> Start:
    models, deltas = i.models, i.deltas
    if models is None or deltas is None:
        raise TypeError("the transfer matrix needs its models and its deltas")
    return lambda p: X.transfer(p, models, deltas, i.test, i.device)


def _transfer_cost(s: TransferSettings, n: Counts) -> float:
    return n.n_models * (n.n_deltas + 1) * n.test(s) * EVAL


def _ship_transfer(page: str, ctx: Shipping) -> Shipped:
    """The matrix of every zoo model that ships a δ."""
    chosen = [a for a, e in ctx.entries.items() if e.get("perturbation")]
    s = {**defaults(page, ctx.ds), "models": chosen}
    name = {a: S.ALGO_SHORT.get(a, a) for a in chosen}
    models = {name[a]: load_zoo_model(ctx.entries[a]["name"])[0] for a in chosen}
    deltas = {name[a]: load_zoo_perturbation(ctx.entries[a]["name"]) for a in chosen}
    job = page_job(page, s, ctx.train, ctx.test(s["test_size"]), models=models, deltas=deltas)
    return s, S.zoo_set_tag([ctx.entries[a] for a in chosen]), job


TRANSFER = PageSpec("transfer", "transfer.py", "Transfer", ":material/swap_horiz:", DEFENDING,
                    "does model A's δ fool model B?",
                    defaults=_transfer_defaults, experiment=_transfer_experiment, cost=_transfer_cost,
                    ship=_ship_transfer)


# ---- Why some models fall: the vulnerability study (no run of its own) -----------------------------------

WHY = PageSpec("why", "vulnerability.py", "Why some models fall", ":material/compare:", VULNERABLE,
               "what in a classifier's recipe makes one pattern fool it: the study, and two natural models side by "
               "side", heading="What makes a classifier fall to one pattern?")


PAGES: dict[str, PageSpec] = {p.id: p for p in (HOME, LAB, BANK, BETA, RACE, IDF, SIZE, UAT, TRANSFER, WHY)}


def spec(page: str) -> PageSpec:
    """The spec of the page with id ``page``."""
    try:
        return PAGES[page]
    except KeyError:
        raise KeyError(f"unknown page {page!r}: one of {', '.join(PAGES)}") from None


# ---- what the rest of the app asks of a page, by its id ------------------------------------------------------
def defaults(page: str, ds: str) -> dict:
    """The default settings of ``page`` on ``ds``."""
    make = spec(page).defaults
    if make is None:
        raise KeyError(f"page {page!r} has no settings")
    return dict(make(ds))


def passes(page: str, s: dict, n_train: int, n_test: int, n_models: int = 1, n_deltas: int = 1,
           n_patterns: int | None = None, channels: int = 3) -> float:
    """Estimated image passes of one run of ``page`` with settings ``s`` (its spec's cost; :class:`Counts`)."""
    cost = spec(page).cost
    if cost is None:
        raise KeyError(f"page {page!r} runs nothing")
    return cost(s, Counts(n_train, n_test, n_models, n_deltas, n_patterns, channels))


def estimate(page: str, s: dict, ds: str, n_train: int, n_test: int, **kw) -> Estimate:
    """The cost of one run of ``page`` on ``ds``, its time on this server and whether the cap allows it."""
    kw.setdefault("channels", CHANNELS.get(ds, 3))
    return for_passes(passes(page, s, n_train, n_test, **kw), ds)


def page_job(page: str, s: dict, train: ImageData, test: ImageData, model=None, device=None, arch: str = "",
             models: dict | None = None, deltas: dict | None = None,
             on_done: Callable[[Job], None] | None = None) -> Job:
    """The job that computes ``page``'s result for settings ``s``."""
    experiment = spec(page).experiment
    if experiment is None:
        raise KeyError(f"page {page!r} runs nothing")
    return Job(page, experiment(s, JobInputs(train, test, model, device, arch, models, deltas)), on_done=on_done)

"""One table per vocabulary: what each dataset and each training algorithm is, written once.

The zoo, the notebooks, the app's settings and budget, the report and the plots all read these two tables;
nothing else in the project spells out a dataset's ε or an algorithm's label.

    DATASETS["cifar10"].eps            8 (0-255 units, the paper's budget)
    ALGORITHMS["uat"].label            "uFGSM (Alg. 3)"
    train_defaults("digits", epochs=8) a TrainConfig with the dataset's defaults and the overrides
    train_config("digits", "uat_pool")  the same for a named algorithm of the table
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.training import TrainConfig


@dataclass(frozen=True)
class DatasetProfile:
    name: str
    label: str                 # for people: "CIFAR-10"
    eps: int                   # ε of the paper's experiments on this dataset, 0-255 units
    arch: str                  # the zoo's architecture
    attack_size: int           # training images every universal attack of the protocol is built on
    channels: int              # image channels (1: grey digits, 3: colour)
    image_size: int            # side of the square images, pixels
    train: dict = field(default_factory=dict)   # TrainConfig fields that differ from TrainConfig's defaults
    why_eps: str = ""


DATASETS: dict[str, DatasetProfile] = {
    "digits": DatasetProfile(
        "digits", "digits", eps=32, arch="smallcnn", attack_size=1297, channels=1, image_size=32,
        train={"lr": 0.05, "flip": False, "augment": False, "batch_size": 64},
        why_eps="Digits are 8x8 images blown up to 32x32 with few grey levels, so the network separates them "
                "with a wide margin: ε = 32/255 plays the role that ε = 8/255 plays on CIFAR-10."),
    "cifar10": DatasetProfile(
        "cifar10", "CIFAR-10", eps=8, arch="resnet20", attack_size=2000, channels=3, image_size=32,
        why_eps="ε = 8/255 is the paper's budget for CIFAR-10."),
}


@dataclass(frozen=True)
class Algorithm:
    name: str                  # the zoo's and the app's id
    label: str                 # for people, with the paper's name
    short: str                 # for tight places (legends, metric cards)
    color: str                 # its colour in every plot
    passes: int                # forward+backward image passes per training step (cost relative to natural)
    universal: bool            # carries a universal δ while training
    trains_as: str             # the TrainConfig algorithm it runs
    overrides: dict = field(default_factory=dict)   # TrainConfig fields beyond the algorithm


POOL = {"delta_pool": 4, "bank_share": 0.25}     # the pool variants: 4 universal δs, a quarter of fixed patterns

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("natural", "natural", "natural", "#636EFA", 1, False, "natural"),
    Algorithm("uat", "uFGSM (Alg. 3)", "uFGSM", "#EF553B", 2, True, "uat"),
    Algorithm("lowcost", "low-cost uFGSM (Alg. 4)", "low-cost", "#00CC96", 1, True, "lowcost"),
    Algorithm("uat_pool", "uFGSM + pool of 4 δ (Alg. 3)", "uFGSM pool", "#B6232A", 2, True, "uat", POOL),
    Algorithm("lowcost_pool", "low-cost + pool of 4 δ (Alg. 4)", "low-cost pool", "#00785A", 1, True, "lowcost",
              POOL),
    Algorithm("fgsm", "FGSM adv. training", "FGSM", "#AB63FA", 2, False, "fgsm"),
    Algorithm("pgd", "PGD adv. training", "PGD", "#FFA15A", 8, False, "pgd"),       # K = 7 attack passes + 1
    Algorithm("uadam", "uADAM (Alg. 3, ADAM on δ)", "uADAM", "#19D3F3", 2, True, "uat", {"delta_rule": "adam"}),
)}
ALGORITHM_ORDER = list(ALGORITHMS)
UNIVERSAL_ALGORITHMS = tuple(a for a, v in ALGORITHMS.items() if v.universal)


def train_defaults(dataset: str, **overrides) -> TrainConfig:
    """A TrainConfig with ``dataset``'s defaults (digits: no augmentation, a smaller lr and batch), then the
    overrides that are not None."""
    prof = DATASETS.get(dataset)
    kw = dict(prof.train) if prof is not None else {}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kw)


def train_config(dataset: str, algorithm: str = "natural", **overrides) -> TrainConfig:
    """The TrainConfig of ``algorithm`` (a name of ALGORITHMS: "uadam" is uat with the adam δ rule, "uat_pool" uat
    with a pool of δs...; or a plain TrainConfig algorithm) on ``dataset``, with the overrides that are not None."""
    a = ALGORITHMS.get(algorithm)
    base = {"algorithm": a.trains_as, **a.overrides} if a is not None else {"algorithm": algorithm}
    return train_defaults(dataset, **{**base, **{k: v for k, v in overrides.items() if v is not None}})

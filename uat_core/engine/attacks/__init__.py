"""Universal attacks: Alg. 2 (the paper's, ``universal``), the strong multi-start search around it
(``strong``), the bank of fixed structured patterns (``bank``, the baseline of every result) and Alg. 1
(iDeepFool, the paper's baseline)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UATError
from .deepfool import deepfool
from .ideepfool import IDeepFool, IDFConfig, ideepfool
from .bank import Bank, pattern_bank, score_bank
from .strong import StrongConfig, StrongUniversalAttack, strong_attack
from .universal import (DEFAULT_STEP, OPTIMIZERS, SCHEDULES, AttackConfig, AttackResult, UniversalAttack,
                        universal_attack)

if TYPE_CHECKING:
    from ..data import ImageData

__all__ = ["make_attack", "AttackConfig", "AttackResult", "UniversalAttack", "universal_attack", "OPTIMIZERS",
           "DEFAULT_STEP", "SCHEDULES", "IDFConfig", "IDeepFool", "ideepfool", "deepfool", "Bank", "pattern_bank",
           "score_bank", "StrongConfig", "StrongUniversalAttack", "strong_attack"]


def make_attack(model, attack_set: "ImageData", attack: str = "alg2", device=None, group=None, **cfg):
    """An Alg. 2 (``alg2``), strong multi-start (``strong``) or iDeepFool (``idf``) run over ``attack_set`` (the
    ``attack`` every record names: metrics.json's "attack", the protocol's);
    cfg: the fields of that attack's config (AttackConfig, StrongConfig, IDFConfig). ``group``: the
    processes of a torchrun (``distributed.Group``) that share Alg. 2's minibatches; the other attacks run in
    one process."""
    x, y = attack_set.float_images(), attack_set.labels
    if group is not None and group.world > 1 and attack != "alg2":
        raise UATError(f"the {attack} attack runs in one process only, not under torchrun")
    if attack == "idf":
        return IDeepFool(model, x, y, IDFConfig(**cfg), device=device)
    if attack == "strong":
        return StrongUniversalAttack(model, x, y, StrongConfig(**cfg), device=device)
    return UniversalAttack(model, x, y, AttackConfig(**cfg), device=device, group=group)

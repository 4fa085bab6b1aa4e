"""Universal attacks: Alg. 2 (the paper's, ``universal``), the strong multi-start search around it
(``strong``), the bank of fixed structured patterns (``bank``, the baseline of every result) and Alg. 1
(iDeepFool, the paper's baseline)."""
from .deepfool import deepfool
from .ideepfool import IDeepFool, IDFConfig, ideepfool
from .bank import Bank, pattern_bank, score_bank
from .strong import StrongConfig, StrongUniversalAttack, strong_attack
from .universal import (DEFAULT_STEP, OPTIMIZERS, SCHEDULES, AttackConfig, AttackResult, UniversalAttack,
                        universal_attack)

__all__ = ["AttackConfig", "AttackResult", "UniversalAttack", "universal_attack", "OPTIMIZERS",
           "DEFAULT_STEP", "SCHEDULES", "IDFConfig", "IDeepFool", "ideepfool", "deepfool", "Bank", "pattern_bank",
           "score_bank", "StrongConfig", "StrongUniversalAttack", "strong_attack"]

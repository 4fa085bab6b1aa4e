"""Universal attacks: Alg. 2 (the paper's, ``universal``) and Alg. 1 (iDeepFool, the baseline)."""
from .deepfool import deepfool
from .ideepfool import IDeepFool, IDFConfig, ideepfool
from .universal import DEFAULT_STEP, OPTIMIZERS, AttackConfig, AttackResult, UniversalAttack, universal_attack

__all__ = ["AttackConfig", "AttackResult", "UniversalAttack", "universal_attack", "OPTIMIZERS",
           "DEFAULT_STEP", "IDFConfig", "IDeepFool", "ideepfool", "deepfool"]

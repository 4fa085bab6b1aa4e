"""Training: natural, universal adversarial training (the paper's Alg. 3 and 4) and per-instance FGSM/PGD.

    config.py      TrainConfig (every field with its unit), the resume keys, TrainResult
    adversary.py   the pool of m universal δs (m = 1: the paper's), its update rule, bank share and re-seeding
    steps.py       one step function per algorithm (natural, uat, lowcost, fgsm, pgd)
    loop.py        the Trainer: minibatches, passes, checkpoints and exact resume, torchrun (DDP)

Run orchestration (output folders, the robustness report, Ctrl-C) is ``uat_core.recipes.runs.run_training``, which
``uat train`` and the zoo share. Example::

    trainer = Trainer(model, train_data, TrainConfig(algorithm="lowcost", eps=8, epochs=10))
    result = trainer.run(progress=True)          # or iterate it: a stream of progress events
"""
from .adversary import Adversary, step_seed
from .config import (ALGORITHMS, DELTA_RULES, RESEED_FROM, RESUME_KEYS, SCHEDULES, UNIVERSAL, TrainConfig,
                     TrainResult)
from .loop import Trainer

__all__ = ["Adversary", "step_seed", "ALGORITHMS", "DELTA_RULES", "RESEED_FROM", "RESUME_KEYS", "SCHEDULES",
           "UNIVERSAL", "TrainConfig", "TrainResult", "Trainer"]

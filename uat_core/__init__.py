"""UAT Lab: universal perturbations and universal adversarial training (Shafahi et al., AAAI 2020).

Modules, one idea each:
    losses        clipped cross-entropy (eq. 3) and the targeted objective
    constraints   ℓ∞ / ℓ2 balls: project(), apply() (x+δ clamped to [0,1])
    attacks       Alg. 2 (UniversalAttack), the strong multi-start attack (StrongUniversalAttack), the bank
                  of fixed patterns (the baseline), per-instance PGD, Alg. 1 (IDeepFool), batched DeepFool
    training      natural, Alg. 3 (uat), Alg. 4 (lowcost), FGSM and PGD training; a pool of δs, bank
                  patterns and re-seeds as a stronger training adversary
    evaluation    top-1/top-5, fooling ratio, per-class accuracy
    data          CIFAR-10, scikit-learn digits, any image folder, as uint8 tensors in memory
    stream        image folders too large for memory, read from disk by DataLoader worker processes
    download      CIFAR-10 fetched for the app (progress callback, MD5, atomic), as the CLI does
    distributed   torchrun helpers: shards, summed gradients and counts across processes
    models        SmallCNN, the CIFAR ResNet family (resnet<6n+2>[_w<k>][_id]), Wide ResNets (wrn<d>_<k>, the
                  paper's wrn32_10), torchvision classifiers, behind a normalizing wrapper
    checkpoint    weights + metadata, loaded with weights_only=True
    export        δ as .pt/.npy/.png/.gif and image grids
    plots         plotly figures shared by the app and the notebooks
    events        the progress-event stream every long run speaks
    protocol      how every robustness figure is measured (attack settings; the held-out halves of the test split)
    pipeline      recipes shared by the CLI, the app and the notebooks (make_attack, robustness_report,
                  heldout_report)
    experiments   the paper's experiments, once, as generators the app, the notebooks and the precompute
                  script all drive (attack, bank, β and data-size sweeps, optimizer race, iDeepFool vs Alg. 2,
                  train-then-attack, transfer)
    cli           python -m uat_core / the `uat` command: train, attack, eval, zoo
    study         the vulnerability study: CIFAR-10 rows that differ in one factor, measured by the protocol
    zoo           the shipped models and their perturbations (and the study's, in a group of their own)
    report        docs/results.md: every zoo model under every attack
"""
from .engine.attacks import (AttackConfig, IDeepFool, IDFConfig, StrongConfig, StrongUniversalAttack, UniversalAttack,
                      ideepfool, strong_attack, universal_attack)
from .engine.constraints import apply, project
from .engine.errors import UATError
from .engine.losses import clipped_cross_entropy

__version__ = "0.1.0"
__all__ = ["AttackConfig", "UniversalAttack", "universal_attack", "StrongConfig", "StrongUniversalAttack",
           "strong_attack", "IDFConfig", "IDeepFool", "ideepfool",
           "apply", "project", "clipped_cross_entropy", "UATError"]

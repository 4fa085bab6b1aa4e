"""UAT Lab: universal perturbations and universal adversarial training (Shafahi et al., AAAI 2020).

Three layers, every import pointing down (import-linter contracts in pyproject.toml; ``lint-imports`` checks them):

engine/       knows nothing of the paper's recipes or of any product
    losses        clipped cross-entropy (eq. 3) and the targeted objective
    constraints   the threat model: Ball (ε in 0-255 units, projection, random start, steepest ascent for ℓ∞ and
                  ℓ2) and Update (the update rules of δ: sign, sgd, momentum, adam); apply() (x+δ clamped to [0,1])
    batches       shuffled minibatches (the blocks of each process under torchrun)
    attacks/      Alg. 2 (UniversalAttack), the strong multi-start attack, the bank of fixed patterns (the
                  baseline), per-instance PGD, Alg. 1 (IDeepFool), batched DeepFool; make_attack
    training/     config (TrainConfig), adversary (the pool of m universal δs; m = 1 is the paper's), steps (natural,
                  Alg. 3 uat, Alg. 4 lowcost, FGSM, PGD), loop (the Trainer: checkpoints, exact resume, torchrun)
    evaluation    top-1/top-5, fooling ratio, per-class accuracy
    data          CIFAR-10, scikit-learn digits, any image folder, as uint8 tensors in memory
    stream        image folders too large for memory, read from disk by DataLoader worker processes
    download      CIFAR-10 fetched for the app (progress callback, MD5, atomic), as the CLI does
    distributed   torchrun helpers: shards, summed gradients and counts across processes
    models        SmallCNN, the CIFAR ResNet family (resnet<6n+2>[_w<k>][_id]), Wide ResNets (wrn<d>_<k>, the
                  paper's wrn32_10), torchvision classifiers, behind a normalizing wrapper
    checkpoint    weights + metadata, loaded with weights_only=True
    export        δ as .pt/.npy/.png/.gif and image grids
    events        the progress-event stream every long run speaks
    errors, fileio, device
recipes/      the paper's recipes over the engine
    protocol      how every robustness figure is measured (attack settings; the held-out halves of the test split)
    pipeline      recipes shared by the CLI, the app and the notebooks (robustness_report, heldout_report, ...)
    experiments   the paper's experiments, once, as generators the app, the notebooks and the precompute
                  script all drive (attack, bank, β and data-size sweeps, optimizer race, iDeepFool vs Alg. 2,
                  train-then-attack, transfer)
    profiles      one table of datasets (ε, architecture, attack-set size, training defaults), one of algorithms
                  (labels, colours, passes per step, which are universal)
    runs          run_training: one training run from its TrainRun to the files of its folder (`uat train`, the zoo)
    study         the vulnerability study: CIFAR-10 rows that differ in one factor, measured by the protocol
products
    cli           python -m uat_core / the `uat` command: train, attack, eval, zoo
    zoo/          the shipped models and perturbations: store, cache, report (docs/results.md), builder, commands
    notebook      the notebooks' shared set-up
    plots         plotly figures shared by the app and the notebooks
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

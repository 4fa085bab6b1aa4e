"""Command line: ``python -m uat_core {train,attack,eval} ...``. Every flag is explained by ``--help``.

Errors a user can cause print one line ("error: ...") and exit with status 2, before any work is done;
what is skipped without stopping the work (a corrupt image met mid-stream) prints one line "warning: ...".

``imagefolder:`` splits too large to decode into memory are streamed from disk (``--stream``, ``stream.py``):
``attack`` decodes only its stratified attack set, ``eval`` and ``train`` stream the whole split (and the
training set) through worker processes; every file's header is checked before any work.

Under ``torchrun --nproc_per_node=N -m uat_core train|attack|eval ...`` the N processes share the work
(``distributed.py``): train with DistributedDataParallel, attack (Alg. 2; ``--strong`` and ``--method idf``
refuse torchrun) with the δ gradient summed across processes every step, eval with each process scoring its
shard of the test images and the counts summed; only rank 0 writes.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import warnings
from pathlib import Path

from .engine import distributed
from .engine.attacks import OPTIMIZERS, AttackConfig, IDFConfig, StrongConfig, make_attack
from .engine.attacks.bank import baseline_of
from .engine.checkpoint import load_checkpoint, model_meta, read_checkpoint
from .engine.data import IMAGENET_MEAN, IMAGENET_STD, dataset_info, has_test_split
from .engine.errors import UATError, UATWarning
from .engine.evaluation import evaluate_data, predict
from .engine.export import PERTURBATION_FILES, comparison_grid, load_perturbation, png_bytes, save_perturbation
from .engine.fileio import atomic_bytes, output_set, prepare_out_dir, write_json
from .engine.models import arch_name, build_model, check_arch
from .engine.stream import is_stream
from .recipes.profiles import train_defaults
from .recipes.runs import DataOptions, TrainRun, check_size, decode_attack_set, run_training
from .zoo import ZOO_DIR, read_manifest
from .zoo import main as zoo_main

EXAMPLES = """examples:
  python -m uat_core train --dataset digits --model smallcnn --algorithm natural --epochs 3 --out runs/digits
  python -m uat_core attack --dataset digits --checkpoint runs/digits/model.pt --eps 32 --out runs/digits-attack
  UAT_DATA=../shared/data/cifar10-jpeg python -m uat_core attack --dataset cifar10 \\
      --checkpoint assets/models/cifar10_resnet20_natural.pt --eps 8 --beta 9 --epochs 10 --out runs/c10
  python -m uat_core eval --dataset digits --checkpoint M.pt \\
      --perturbation runs/digits-attack/perturbation.pt --out runs/t
  uat zoo list        (after pip install -e .: the same commands as "uat train|attack|eval|zoo ...")
"""


def _beta(s: str) -> float:
    if s.lower() in ("inf", "infinity", "none"):
        return math.inf
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"beta must be a number or 'inf', got {s!r}") from None


def _common(p: argparse.ArgumentParser, out_help: str):
    p.add_argument("--dataset", default="digits",
                   help="cifar10 | digits | imagefolder:<path> (default: digits, bundled and offline)")
    p.add_argument("--data-root", default=None,
                   help="where cifar10 lives: an ImageFolder tree with train/ and test/, or a torchvision "
                        "CIFAR-10 root (default: $UAT_DATA, else download into ~/.cache/uat_lab)")
    p.add_argument("--image-size", type=int, default=224, help="side of the square crop for imagefolder data")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU) | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (subsets, order, init)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--force", action="store_true", help="overwrite existing outputs in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--eval-size", type=int, default=None,
                   help="evaluate on this many test images (stratified, seeded; default: the whole test split)")
    p.add_argument("--stream", default="auto",
                   help="imagefolder data: read a split from disk as it is needed (worker processes decode each "
                        "minibatch; memory stays bounded whatever the folder's size; every file's header is checked "
                        "first) instead of decoding it whole into memory (faster for small folders): auto (stream a "
                        "split whose decoded copy exceeds --stream-threshold) | on | off. Training streams with "
                        "random-resized-crop + flip, evaluation with resize + center crop (as in memory). cifar10 "
                        "and digits are always in memory")
    p.add_argument("--stream-threshold", type=float, default=2048,
                   help="--stream auto: stream a split whose decoded uint8 copy (images × 3 × image-size²) is larger "
                        "than this many MB")
    p.add_argument("--workers", type=int, default=None,
                   help="processes decoding a streamed split (default: one per CPU core, at most 8; 0 = decode in "
                        "the main process)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is a one-line UATError (main prints "error: ..." and returns 2)."""

    def error(self, message):
        raise UATError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="uat" if Path(sys.argv[0]).name == "uat" else "python -m uat_core", epilog=EXAMPLES,
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 description="UAT Lab: universal perturbations (Alg. 1, Alg. 2) and universal "
                             "adversarial training (Alg. 3, Alg. 4) of Shafahi et al., AAAI 2020.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{train,attack,eval,zoo}")

    t = sub.add_parser("train", help="train a model (natural, uat, lowcost, fgsm, pgd)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(t, "folder for model.pt, checkpoint.pt (resume state), metrics.json")
    t.add_argument("--model", default="smallcnn",
                   help="smallcnn | resnet20 (family resnet<6n+2>[_w<k>][_id]) | wrn32_10 (family wrn<d>_<k>) | "
                        "torchvision:<name>")
    t.add_argument("--width", type=int, default=1,
                   help="resnet family: multiply the channels by this integer ≥ 1 (resnet20 --width 4 is resnet20_w4)")
    t.add_argument("--shortcut", default="projection",
                   help="resnet family: projection (1×1 conv where shapes change; the default) | identity "
                        "(He et al.'s parameter-free option A; adds _id to the name)")
    t.add_argument("--label-smoothing", type=float, default=0.0,
                   help="label smoothing of the weights' cross-entropy, in [0, 1) (0 = none)")
    t.add_argument("--algorithm", default="natural",
                   help="natural | uat (Alg. 3) | lowcost (Alg. 4) | fgsm | pgd (per-instance baselines)")
    t.add_argument("--epochs", type=int, default=10, help="passes over the training set")
    t.add_argument("--batch-size", type=int, default=None, help="minibatch size per process (default 128; digits 64)")
    t.add_argument("--lr", type=float, default=None,
                   help="peak learning rate of momentum SGD (default 0.1; digits 0.05)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum of the weights")
    t.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    t.add_argument("--schedule", default="step",
                   help="learning-rate schedule: step (÷10 at 50%% and 75%% of the steps, the paper's) | "
                        "onecycle | cosine | constant")
    t.add_argument("--no-augment", action="store_true", help="turn off random crop + flip (on for cifar10)")
    t.add_argument("--eps", type=float, default=8.0, help="ε of δ or of the per-instance attacks, 0-255 units")
    t.add_argument("--norm", default="linf",
                   help="the ball of the universal δ of uat / lowcost: linf | l2 (--eps is then the ℓ2 radius in 0-255 "
                        "units; the fgsm rule steps ε along g/‖g‖₂); fgsm and pgd training stay ℓ∞")
    t.add_argument("--delta-rule", default="fgsm", help="update of the universal δ: fgsm (eq. 6) | sgd (eq. 7) | adam")
    t.add_argument("--delta-lr", type=float, default=1.0,
                   help="τδ for --delta-rule sgd (0-255 units per unit gradient) or adam (0-255 units per step)")
    t.add_argument("--pgd-steps", type=int, default=7, help="K for --algorithm pgd")
    t.add_argument("--pgd-step-size", type=float, default=None, help="PGD step α in 0-255 units (default 2.5·ε/K)")
    t.add_argument("--fgsm-random-start", action="store_true",
                   help="--algorithm fgsm: start from a uniform point of the ε-ball and step 1.25·ε (Wong et al. "
                        "2020's 'fast FGSM', which avoids catastrophic overfitting); off = the paper's plain FGSM")
    t.add_argument("--delta-pool", type=int, default=1,
                   help="uat/lowcost: keep m universal perturbations and train against them in turn, updating one "
                        "per step (memory, not passes; 1 = the paper's single δ)")
    t.add_argument("--reseed-every", type=int, default=0,
                   help="uat/lowcost: every k steps score --reseed-candidates new starts against the active δ on a "
                        "slice of the minibatch (one forward, no backward) and keep the one of highest loss "
                        "(0 = never, the paper's)")
    t.add_argument("--reseed-from", default="bank",
                   help="where re-seed candidates come from: bank (structured stripes/checkerboards at ±ε and "
                        "random signs) | random (random signs only)")
    t.add_argument("--reseed-candidates", type=int, default=7, help="candidates scored per re-seed")
    t.add_argument("--bank-share", type=float, default=0.0,
                   help="uat/lowcost: this fraction of every minibatch carries random fixed patterns of the bank "
                        "(stripes, checkerboards, colours at ±ε) instead of δ, in the same passes (0 = the paper's)")
    t.add_argument("--init-weights", default=None,
                   help="fine-tune: start from the weights of this model.pt or zoo model name (same architecture "
                        "and data); recorded in the checkpoint's metadata")
    t.add_argument("--train-size", type=int, default=None, help="train on this many images (stratified subset)")
    t.add_argument("--track-every", type=int, default=20,
                   help="uat/lowcost: measure the 'after ascent' minibatch accuracy every k steps (one extra "
                        "forward each; 0 = never)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out/checkpoint.pt (same flags; continues mid-epoch after Ctrl-C)")
    t.add_argument("--amp", action="store_true", help="CUDA only: bfloat16 mixed precision")
    t.add_argument("--channels-last", action="store_true", help="CUDA only: channels-last memory format")
    t.add_argument("--report-attack-size", type=int, default=2000,
                   help="robustness report: training images the fresh Alg. 2 attack is built on")
    t.add_argument("--report-attack-epochs", type=int, default=10, help="robustness report: attack epochs")
    t.add_argument("--report-eps", type=float, default=None, help="robustness report: ε (default: --eps)")
    t.add_argument("--no-report", action="store_true", help="skip the robustness report")

    a = sub.add_parser("attack", help="build a universal perturbation against a model (Alg. 2 or iDeepFool)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(a, "folder for perturbation.{pt,npy,png,gif}, grid.png and metrics.json")
    a.add_argument("--checkpoint", required=True,
                   help="a model.pt written by 'train' (or a zoo model), or torchvision:<name> (e.g. "
                        "torchvision:vgg16): that torchvision classifier with its published ImageNet weights "
                        "(downloaded once into torch's cache; the data must have the 1000 ImageNet class folders, "
                        "whose sorted order is torchvision's class order)")
    a.add_argument("--method", default="alg2",
                   help="alg2 (the paper's SGD attack) | idf (iDeepFool, Alg. 1; one process only: refused under "
                        "torchrun)")
    a.add_argument("--eps", type=float, default=8.0, help="‖δ‖ bound in 0-255 units (ℓ∞; ℓ2 radius for --norm l2)")
    a.add_argument("--beta", type=_beta, default=9.0, help="clip of the per-image cross-entropy; 'inf' = none")
    a.add_argument("--optimizer", default="pgd", help="sgd | msgd | pgd (sign gradient) | adam")
    a.add_argument("--norm", default="linf", help="linf | l2")
    a.add_argument("--step-size", type=float, default=None,
                   help="τ in 0-255 units (default: pgd and adam ε/10, msgd 25·ε, sgd 250·ε per unit gradient)")
    a.add_argument("--step-decay", type=float, default=1.0, help="τ is multiplied by this after every epoch")
    a.add_argument("--epochs", type=int, default=10, help="passes over the attack set (idf: cap on passes)")
    a.add_argument("--batch-size", type=int, default=128,
                   help="attack minibatch size (per process: under torchrun --nproc_per_node=N the minibatch "
                        "is N times this, each process taking one block of it)")
    a.add_argument("--attack-size", type=int, default=2000, help="training images the attack is built on")
    a.add_argument("--target", type=int, default=None, help="targeted attack: class index every image is pushed to")
    a.add_argument("--snapshot-every", type=int, default=10, help="δ snapshot every k steps (for the GIF)")
    a.add_argument("--xi", type=float, default=0.8, help="idf: stop once this fooling ratio is reached")
    a.add_argument("--strong", action="store_true",
                   help="the strong universal attack: screen a bank of fixed stripe/checkerboard patterns and random "
                        "starts on probe images of the attack set, refine Alg. 2 (cosine-decayed steps from ε/4) from "
                        "the best --top-k starts and from δ = 0, keep only the leaders (successive halving) and return "
                        "the δ with the highest objective on the attack set; costs about 3x plain Alg. 2 with the "
                        "same --epochs; one process only (refused under torchrun). Without it: the paper's Alg. 2 "
                        "from δ = 0")
    a.add_argument("--init", default=None,
                   help="--strong: where the starts come from, comma-separated from bank, random, zero "
                        "(default bank,random,zero)")
    a.add_argument("--restarts", type=int, default=None, help="--strong: random starts screened (default 16)")
    a.add_argument("--top-k", type=int, default=None,
                   help="--strong: screened starts refined with Alg. 2, plus δ = 0 (default 4)")
    a.add_argument("--rounds", type=int, default=None,
                   help="--strong: successive-halving rounds before the winner's last stretch (default 3)")
    a.add_argument("--probe", type=int, default=None,
                   help="--strong: probe images of the first screen; the second uses 4x as many (default 32)")

    e = sub.add_parser("eval", help="evaluate any saved δ on any model (transfer)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(e, "folder for metrics.json and grid.png")
    e.add_argument("--checkpoint", required=True,
                   help="model.pt to evaluate, or torchvision:<name> (published ImageNet weights, as for attack)")
    e.add_argument("--perturbation", required=True, help="a perturbation.pt or .npy (C×H×W, pixel units)")
    sub.add_parser("zoo", add_help=False,
                   help="the model zoo: build, report, reattack, refresh, list (uat zoo --help)")
    return ap


def main_exit() -> None:
    """The ``uat`` console script (pyproject.toml): ``uat train|attack|eval|zoo ...``."""
    raise SystemExit(main())


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "zoo":                 # the model zoo has its own commands (python -m uat_core.zoo)
        return zoo_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        with _one_line_warnings():
            return {"train": cmd_train, "attack": cmd_attack, "eval": cmd_eval}[args.cmd](args)
    except UATError as e:
        if distributed.speaks():         # under torchrun: rank 0's line, or each rank's once they run together
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:            # attack / eval (train saves a checkpoint itself): files are atomic
        print("\ninterrupted: nothing was half-written (every output is written whole or not at all)",
              file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _one_line_warnings():
    """UATWarnings (a corrupt image skipped mid-stream) print as one line "warning: ..." on stderr."""

    with warnings.catch_warnings():
        warnings.simplefilter("default", UATWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, UATWarning):
                print(f"warning: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)
        warnings.showwarning = show
        yield


def _load_model(args, info, device):
    """(model in eval mode, meta) of --checkpoint: a model.pt, or ``torchvision:<name>``, torchvision's published
    ImageNet weights of that classifier (``info``: the dataset's, which must have the 1000 ImageNet classes)."""
    ck = str(args.checkpoint)
    if ck.startswith("torchvision:") and not Path(ck).exists():
        check_arch(ck)
        model = build_model(ck, info["num_classes"], info["shape"][0], IMAGENET_MEAN, IMAGENET_STD, pretrained=True)
        meta = model_meta(ck, "imagenet", info["classes"], info["shape"][0], info["shape"][1], IMAGENET_MEAN,
                          IMAGENET_STD, training={"weights": "torchvision's published ImageNet weights (DEFAULT)"})
        return model.to(device).eval(), meta
    return load_checkpoint(ck, {"num_classes": info["num_classes"], "shape": info["shape"]}, device)


def _grid(model, test, delta, device, n=16):
    sub = test.subset(n, 0)
    x = sub.float_images()
    top_c, _ = predict(model, sub.images, None, device=device)
    top_p, conf = predict(model, sub.images, delta, device=device)
    return comparison_grid(x, delta, sub.classes, top_c[:, 0], top_p[:, 0], sub.labels, conf)


def cmd_attack(args) -> int:

    # --- validate everything before any work (every process under torchrun: the same checks)
    if args.method not in ("alg2", "idf"):
        raise UATError(f"unknown method '{args.method}': choose alg2 or idf")
    strong_flags = {k: getattr(args, k) for k in ("init", "restarts", "top_k", "rounds", "probe")
                    if getattr(args, k) is not None}
    if args.strong and args.method == "idf":
        raise UATError("--strong is a search around Alg. 2: it cannot be combined with --method idf")
    if strong_flags and not args.strong:
        raise UATError(f"--{next(iter(strong_flags)).replace('_', '-')} needs --strong")
    if args.optimizer not in OPTIMIZERS:                  # checked for idf too: a typo is never ignored
        raise UATError(f"unknown optimizer '{args.optimizer}': choose {', '.join(OPTIMIZERS)}")
    if args.method == "idf" and args.target is not None:
        raise UATError("--target needs --method alg2: iDeepFool (Alg. 1) is untargeted")
    attack = "strong" if args.strong else args.method
    world = distributed.world_size()
    if world > 1 and attack != "alg2":
        raise UATError(f"{'--strong' if args.strong else '--method idf'} runs in one process only: run it without "
                       "torchrun (under torchrun, attack shares Alg. 2, the default method, among the processes)")
    if args.strong:
        if args.step_decay != 1.0:
            raise UATError("--step-decay does not apply to --strong (its steps decay by a cosine within each start; "
                           "--step-size sets the first one)")
        cfg = dict(eps=args.eps, beta=args.beta, optimizer=args.optimizer, norm=args.norm, tau0=args.step_size,
                   epochs=args.epochs, batch_size=args.batch_size, target=args.target, seed=args.seed,
                   snapshot_every=args.snapshot_every, **strong_flags)
        StrongConfig(**cfg).validate()
    elif args.method == "alg2":
        cfg = dict(eps=args.eps, beta=args.beta, optimizer=args.optimizer, norm=args.norm,
                   step_size=args.step_size, step_decay=args.step_decay, epochs=args.epochs,
                   batch_size=args.batch_size, target=args.target, seed=args.seed,
                   snapshot_every=args.snapshot_every)
        AttackConfig(**cfg).validate()
    else:
        if not args.beta > 0:
            raise UATError(f"beta must be > 0 (use inf for no clipping), got {args.beta}")
        cfg = dict(eps=args.eps, norm=args.norm, xi=args.xi, max_passes=args.epochs,
                   batch_size=args.batch_size, seed=args.seed)
        IDFConfig(**cfg).validate()
    check_size(args.attack_size, "--attack-size")
    check_size(args.eval_size, "--eval-size")
    data = _data_options(args)
    data.check()
    device = distributed.device_for(args.device)
    info, model, meta = _model_and_info(args, device)
    if args.target is not None and not (0 <= args.target < info["num_classes"]):
        raise UATError(f"--target must be a class index in [0, {info['num_classes'] - 1}]")
    outputs = list(PERTURBATION_FILES) + ["metrics.json", "grid.png"]
    prepare_out_dir(args.out, outputs, args.force, create=False)    # refuse a clash before any work
    lead = distributed.env_rank() == 0                              # rank 0 alone prints and writes
    train_s = data.open("train", info, note=lead)                 # the files listed, nothing decoded
    test_s = data.open("test", info, note=lead)
    if world > 1:
        distributed.check_shards(world, "attack images", data.split_len("train", info, train_s, args.attack_size))
        distributed.check_shards(world, "test images", data.split_len("test", info, test_s, args.eval_size))

    # --- work (a streamed split: its files are checked first, then only the attack set is decoded)
    group = distributed.start(device)
    together = False
    try:
        train = data.load("train", info, limit=args.attack_size, stream=train_s, group=group)
        test = data.load("test", info, limit=args.eval_size, stream=test_s, group=group)
        streamed = is_stream(test)
        if is_stream(train):                  # the attack set: small, decoded into memory (in shards under torchrun)
            train = decode_attack_set(train, group, progress=not args.quiet)
        same_images = not has_test_split(args.dataset)
        if same_images and lead:
            print(f"note: {args.dataset[12:]} has no separate train and test (or val) folders: the test accuracy "
                  "below is measured on the same images the attack is built on", file=sys.stderr)
        run = make_attack(model, train, attack, device, group=group, **cfg)
        res = run.run(progress=not args.quiet and lead,
                      desc={"idf": "iDeepFool", "strong": "strong attack"}.get(attack, "Alg. 2"))
        eps = args.eps / 255.0
        # the baseline every figure stands beside: the best fixed bank pattern at the same ε (chosen on the attack set)
        fixed_name, fixed = baseline_of(res, model, train.float_images(), train.labels, eps, args.norm, args.beta,
                                        args.target, args.seed, device, group=group)   # torchrun: scored in shards
        if group is not None:                 # the same sums on every rank: rank 0's choice, to be sure
            fixed_name, fixed = group.broadcast((fixed_name, fixed))
        m, mf = evaluate_data(model, test, [res.delta, fixed], test.num_classes, device=device, target=args.target,
                              group=group)
        together = True
        if not lead:
            return 0
        out = Path(args.out)
        with output_set(out, outputs, args.force) as stage:   # the old set stays whole until the new one is in
            files = {k: str(out / Path(v).name) for k, v in save_perturbation(stage, res.delta, eps,
                                                                            res.snapshots).items()}
            atomic_bytes(stage / "grid.png", png_bytes(_grid(model, test, res.delta, device)))
            beats = m["perturbed_top1"] < mf["perturbed_top1"]
            metrics = {**m, "eps": args.eps, "beta": args.beta, "method": args.method, "attack": attack,
                       "start": res.config.get("start", "zero"), "leaderboard": res.config.get("leaderboard"),
                       "best_fixed": {"name": fixed_name, "perturbed_top1": mf["perturbed_top1"]},
                       "beats_best_fixed": beats, "seconds": res.seconds,
                       "steps": res.steps, "attack_size": len(train), "eval_size": m["n"], "streamed": streamed,
                       "world_size": world, "dataset": args.dataset, "checkpoint": str(args.checkpoint),
                       "model": meta["arch"], "test_is_attack_set": same_images, "config": res.config,
                       "history": res.history, "files": files}
            write_json(stage / "metrics.json", metrics)
        print(f"clean top-1 {100 * m['clean_top1']:.1f}% -> perturbed top-1 {100 * m['perturbed_top1']:.1f}% "
              f"(fooling ratio {100 * m['fooling_ratio']:.1f}%, ε = {args.eps:g}/255, {res.seconds:.1f} s, "
              f"{attack}{', start ' + res.config['start'] if attack == 'strong' else ''}"
              f"{f', {world} processes' if world > 1 else ''}); best fixed pattern "
              f"({fixed_name}) {100 * mf['perturbed_top1']:.1f}%"
              f"{'' if beats else ' -- the attack does NOT beat it'}; wrote {out}")
        return 0
    finally:
        distributed.finish(group, together)


def _model_and_info(args, device):
    """(dataset info, model, meta) for attack and eval: an imagefolder's image size is the checkpoint's (a
    ``torchvision:`` model's: --image-size); the checkpoint is checked against the data."""
    size = args.image_size
    if args.dataset.startswith("imagefolder:") and not str(args.checkpoint).startswith("torchvision:"):
        dataset_info(args.dataset, size)               # a missing or empty folder: said before the checkpoint
        size = read_checkpoint(args.checkpoint)["meta"].get("image_size", size)
    info = dataset_info(args.dataset, size)
    model, meta = _load_model(args, info, device)
    return info, model, meta


def cmd_eval(args) -> int:

    check_size(args.eval_size, "--eval-size")
    data = _data_options(args)
    data.check()
    device = distributed.device_for(args.device)
    info, model, meta = _model_and_info(args, device)
    delta = load_perturbation(args.perturbation, info["shape"])
    prepare_out_dir(args.out, ["metrics.json", "grid.png"], args.force, create=False)
    world, lead = distributed.world_size(), distributed.env_rank() == 0
    test_s = data.open("test", info, note=lead)
    if world > 1:
        distributed.check_shards(world, "test images", data.split_len("test", info, test_s, args.eval_size))
    group = distributed.start(device)
    together = False
    try:
        test = data.load("test", info, limit=args.eval_size, stream=test_s, group=group)  # a data error: no --out
        out = Path(args.out)
        m = evaluate_data(model, test, delta, test.num_classes, device=device, group=group)   # a stream: minibatches
        together = True
        if not lead:
            return 0
        eps255 = float(delta.abs().max()) * 255
        with output_set(out, ["metrics.json", "grid.png"], args.force) as stage:
            atomic_bytes(stage / "grid.png", png_bytes(_grid(model, test, delta, device)))
            write_json(stage / "metrics.json", {**m, "eps": round(eps255, 3), "dataset": args.dataset,
                                                "checkpoint": str(args.checkpoint),
                                                "perturbation": str(args.perturbation), "model": meta["arch"],
                                                "eval_size": m["n"], "streamed": is_stream(test),
                                                "world_size": world})
        print(f"clean top-1 {100 * m['clean_top1']:.1f}% -> perturbed top-1 {100 * m['perturbed_top1']:.1f}% "
              f"(fooling ratio {100 * m['fooling_ratio']:.1f}%, ‖δ‖∞ = {eps255:.2f}/255); wrote {out}")
        return 0
    finally:
        distributed.finish(group, together)


def _data_options(args) -> DataOptions:
    """The data flags of a command line."""
    return DataOptions(args.dataset, args.data_root, image_size=args.image_size, seed=args.seed, stream=args.stream,
                       stream_threshold=args.stream_threshold, workers=args.workers, quiet=args.quiet)


def _init_weights(src: str) -> tuple[Path, str]:
    """(path, name for the metadata) of --init-weights: a model.pt path, or a zoo model's name."""
    path = Path(src)
    if path.is_file():
        return path, path.name
    man = read_manifest()["models"]
    if src not in man:
        raise UATError(f"--init-weights: {src} is neither a file nor a zoo model name")
    return ZOO_DIR / man[src]["file"], src


def train_run(args) -> TrainRun:
    """The TrainRun of ``uat train ARGS`` (nothing checked yet: :func:`run_training` validates it)."""
    cfg = train_defaults(
        args.dataset, algorithm=args.algorithm, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
        eps=args.eps, delta_rule=args.delta_rule, delta_lr=args.delta_lr, pgd_steps=args.pgd_steps,
        pgd_step_size=args.pgd_step_size, fgsm_random_start=args.fgsm_random_start,
        track_every=args.track_every, seed=args.seed, amp=args.amp, channels_last=args.channels_last,
        delta_pool=args.delta_pool, reseed_every=args.reseed_every, reseed_from=args.reseed_from,
        reseed_candidates=args.reseed_candidates, bank_share=args.bank_share,
        label_smoothing=args.label_smoothing, norm=args.norm)
    if args.no_augment:
        cfg.augment = False
    init, source = _init_weights(args.init_weights) if args.init_weights else (None, None)
    return TrainRun(_data_options(args), arch_name(check_arch(args.model), args.width, args.shortcut), cfg,
                    Path(args.out), device=args.device, force=args.force, resume=args.resume,
                    train_size=args.train_size, eval_size=args.eval_size, init_weights=init, init_source=source,
                    report=not args.no_report, report_eps=args.report_eps, report_attack_size=args.report_attack_size,
                    report_attack_epochs=args.report_attack_epochs, command="python -m uat_core " + " ".join(args.argv))


def cmd_train(args) -> int:
    """``uat train``: :func:`uat_core.recipes.runs.run_training` over the flags."""
    return run_training(train_run(args)).code

"""Runs as the command line and the zoo make them: where the data comes from (:class:`DataOptions`) and one
training run from its typed description to the files in its folder (:func:`run_training`).

``uat train`` builds a :class:`TrainRun` from its flags and calls :func:`run_training`; the zoo builds one from
its recipe (TrainConfig fields, not command-line strings) and calls the same function. Nothing here parses a
command line: ``TrainRun.command`` is only *recorded* in the model's metadata.

    run = TrainRun(DataOptions("digits"), "smallcnn", train_defaults("digits", epochs=3), Path("runs/d"))
    outcome = run_training(run)          # outcome.code: 0 done, 130 stopped (resumable); outcome.metrics
"""
from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine import distributed
from ..engine.checkpoint import read_checkpoint, save_checkpoint
from ..engine.data import DIGITS_TRAIN, ImageData, check_class_folders, dataset_info, load_dataset
from ..engine.errors import UATError
from ..engine.evaluation import evaluate_data
from ..engine.fileio import atomic_write, output_set, prepare_out_dir, write_json
from ..engine.models import check_arch
from ..engine.stream import FolderStream, check_options, default_workers, open_split
from ..engine.training import TrainConfig
from . import protocol
from .pipeline import make_trainer, meta_for, robustness_report


def cli_flags(fields: dict) -> list[str]:
    """The ``uat train`` flags that say the same as ``fields`` (TrainConfig and run fields by their names): what a
    recipe records as its command, and what a user types. ``report=False`` is ``--no-report``, ``augment=False``
    ``--no-augment``, a True boolean a bare flag; numbers as Python writes them shortest (``5e-4`` -> 0.0005)."""
    out: list[str] = []
    for k, v in fields.items():
        if k in ("report", "augment"):
            out += [] if v else [f"--no-{k}"]
        elif v is True:
            out.append("--" + k.replace("_", "-"))
        else:
            out += ["--" + k.replace("_", "-"), f"{v:g}" if isinstance(v, float) else str(v)]
    return out


def check_size(n: int | None, what: str) -> None:
    """A count a user gave (None: not given) must be at least 1."""
    if n is not None and n < 1:
        raise UATError(f"{what} must be at least 1, got {n}")


@dataclass
class DataOptions:
    """Where a command's images come from and how they are read (the CLI's data flags)."""
    dataset: str = "digits"            # cifar10 | digits | imagefolder:<path>
    data_root: str | None = None       # cifar10's location (None: $UAT_DATA, else a download)
    image_size: int = 224              # imagefolder: side of the square crop, pixels
    seed: int = 0                      # seed of the stratified subsets
    stream: str = "auto"               # auto | on | off: read imagefolder splits from disk as needed
    stream_threshold: float = 2048     # MB of decoded uint8 above which auto streams
    workers: int | None = None         # decoding processes of a stream (None: one per core, at most 8)
    quiet: bool = False                # no progress bars

    def check(self) -> None:
        """The data options, before any work: the stream options, and (imagefolder) test classes the train
        split has."""
        check_options(self.stream, self.stream_threshold, self.workers, self.dataset)
        if self.workers is None:
            self.workers = default_workers()
        if self.dataset.startswith("imagefolder:"):
            check_class_folders(self.dataset)

    def open(self, split: str, info: dict, note: bool = True):
        """The split as a stream (files listed, not yet checked), or None when it is decoded into memory."""
        return open_split(self.dataset, split, info["shape"][1], self.stream, self.stream_threshold, self.workers,
                          note=note and not self.quiet)

    def load(self, split: str, info: dict, limit: int | None = None, stream=False, group=None):
        """One split: decoded into memory (``limit``: a seeded stratified subset), or, where ``stream`` says so, a
        FolderStream over the same subset of the files with every header checked (``stream``: an :meth:`open`
        result to reuse; False: open it here). Under torchrun (``group``) rank 0 decodes (and caches) an in-memory
        split first and the others then read its cache; a stream's headers are checked in shards, one a rank, and
        a problem any rank finds stops every rank with its line."""
        s = self.open(split, info, note=group is None or group.rank == 0) if stream is False else stream
        if s is None:
            def load():
                return load_dataset(self.dataset, split, self.data_root, limit=limit, seed=self.seed,
                                    image_size=info["shape"][1],
                                    progress=not self.quiet and (group is None or group.rank == 0))
            return load() if group is None else group.first(load)
        s = s.select(limit, self.seed)
        if group is None:
            return s.check(progress=not self.quiet)
        err = None
        try:
            s.part(*group.span(len(s))).check(progress=not self.quiet and group.rank == 0)
        except UATError as e:
            err = str(e)
        group.agree(err)
        return s

    def split_len(self, split: str, info: dict, stream, limit: int | None = None) -> int:
        """The number of images a command takes from a split (``limit``: at most this many), from the file list
        or the dataset's known size: nothing is decoded."""
        if stream is not None:
            n = len(stream)
        elif self.dataset.startswith("imagefolder:"):
            n = len(FolderStream.open(self.dataset, split, info["shape"][1]))
        else:
            n = {("digits", "train"): DIGITS_TRAIN, ("digits", "test"): 1797 - DIGITS_TRAIN,
                 ("cifar10", "train"): 50_000, ("cifar10", "test"): 10_000}[self.dataset, split]
        return n if limit is None else min(n, limit)


def decode_attack_set(stream, group, progress: bool) -> ImageData:
    """The (small) attack set of a streamed split decoded into an ImageData; under torchrun each rank decodes
    a contiguous shard of its files and the shards are gathered, so every rank holds the same images in the
    same order as one process would."""
    if group is None:
        return stream.load(progress=progress)
    part, err = None, None
    try:
        part = stream.part(*group.span(len(stream))).load(progress=progress and group.rank == 0)
    except UATError as e:
        err = str(e)
    group.agree(err)
    assert part is not None                     # agree() raised on every rank if any rank failed
    images, labels = group.gather_rows(part.images), group.gather_rows(part.labels)
    S = stream.image_size
    return ImageData(images, labels, part.classes, part.name, part.split,
                     f"Image folder {stream.root}: {len(labels)} images read from disk, resized and center-cropped "
                     f"to {S}x{S}", part.mean, part.std)


@dataclass
class TrainRun:
    """One training run: the model, its TrainConfig, where it writes, and the report made after it."""
    data: DataOptions
    arch: str                              # a models.py architecture name, e.g. resnet20, resnet20_w2_id
    config: TrainConfig
    out: Path                              # model.pt, metrics.json, delta.pt, checkpoint.pt go here
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    force: bool = False                    # replace the outputs of an earlier run in ``out``
    resume: bool = False                   # continue from out/checkpoint.pt
    train_size: int | None = None          # a stratified subset of the training split (None: all of it)
    eval_size: int | None = None           # a stratified subset of the test split (None: all of it)
    init_weights: Path | None = None       # a model.pt to start from (the caller resolves zoo names)
    init_source: str | None = None         # how the metadata names it (a zoo name or a file name)
    report: bool = True                    # the robustness report after training (protocol.py)
    report_eps: float | None = None        # its ε in 0-255 units (None: config.eps)
    report_attack_size: int = 2000         # its attack images
    report_attack_epochs: int = protocol.EPOCHS
    command: str = ""                      # the command line recorded in the model's metadata
    progress_desc: str = ""                # the progress bar's label (default: "train <algorithm>")

    def validate(self) -> "TrainRun":
        """Every check that needs no data, before any work; one-line UATErrors."""
        self.arch = check_arch(self.arch)
        self.config.validate()
        check_size(self.train_size, "--train-size")
        check_size(self.eval_size, "--eval-size")
        if self.report and not (0 < self.report_eps_value <= 255):
            raise UATError(f"--report-eps must be in (0, 255], got {self.report_eps_value}")
        check_size(self.report_attack_size, "--report-attack-size")
        check_size(self.report_attack_epochs, "--report-attack-epochs")
        self.data.check()
        return self

    @property
    def report_eps_value(self) -> float:
        return self.config.eps if self.report_eps is None else self.report_eps


@dataclass
class TrainOutcome:
    code: int                              # 0: finished; 130: stopped early (a checkpoint to resume from)
    metrics: dict | None = None            # what metrics.json holds (rank 0 of a finished run)


def _init_state(run: TrainRun, train) -> dict:
    """{"state_dict", "source"} of ``run.init_weights``, checked against the run."""
    assert run.init_weights is not None
    src = run.init_source or run.init_weights.name
    obj = read_checkpoint(run.init_weights)
    meta = obj["meta"]
    if meta["arch"] != run.arch or meta["dataset"] != run.data.dataset:
        raise UATError(f"--init-weights: {src} holds a {meta['arch']} model on {meta['dataset']}, "
                       f"not {run.arch} on {run.data.dataset}")
    if [meta.get("in_channels"), meta.get("image_size")] != [train.shape[0], train.shape[1]]:
        raise UATError(f"--init-weights: {src} expects {meta.get('in_channels')}×{meta.get('image_size')} images, "
                       f"the data has {train.shape[0]}×{train.shape[1]}")
    bad = [k for k, v in obj["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UATError(f"--init-weights: {src} has NaN or Inf weights ({bad[0]})")
    return {"state_dict": obj["state_dict"], "source": src}


def run_training(run: TrainRun) -> TrainOutcome:
    """Train as ``uat train`` does: the same checks, resume, checkpoints every epoch, the robustness report, and
    the outputs written whole into ``run.out``. Ctrl-C (SIGINT) or SIGTERM finish the current step and save a
    checkpoint (code 130); a second Ctrl-C aborts at once. Under torchrun every process calls it; only rank 0
    writes. Bad input raises a one-line UATError before any work."""
    run.validate()
    cfg, data = run.config, run.data
    info = dataset_info(data.dataset, data.image_size)
    out = Path(run.out)
    ckpt_path = out / "checkpoint.pt"
    obj = None
    if run.resume:
        if not ckpt_path.is_file():
            raise UATError(f"nothing to resume: {ckpt_path} does not exist")
        if (out / "model.pt").exists() and not run.force:
            raise UATError(f"the run in {out} already finished (model.pt exists): nothing to resume "
                           "(--force resumes anyway and overwrites its outputs)")
        obj = read_checkpoint(ckpt_path)
        if not obj.get("extra"):
            raise UATError(f"{ckpt_path} holds no resume state")
        if obj["meta"]["arch"] != run.arch or obj["meta"]["dataset"] != data.dataset:
            raise UATError(f"cannot resume: {ckpt_path} holds a {obj['meta']['arch']} model on "
                           f"{obj['meta']['dataset']}, not {run.arch} on {data.dataset}")
    else:
        prepare_out_dir(out, ["model.pt", "metrics.json", "checkpoint.pt", "delta.pt"], run.force)

    world = distributed.world_size()              # under torchrun: DDP, one process per GPU (or CPU)
    device = distributed.device_for(run.device)
    rank = distributed.env_rank()
    # a streamed split is read from disk as training goes; its files (and the test split's, so that a bad test
    # folder stops the run now, not after training) are listed now and their headers checked first
    train_stream = data.open("train", info, note=rank == 0)
    test_stream = data.open("test", info, note=rank == 0)
    group = distributed.start(device)
    ok = False
    try:
        # rank 0 decodes (and caches) in-memory data first, the others then read its cache; a stream's headers
        # are checked in shards, one a rank
        if train_stream is None:
            train = data.load("train", info, stream=None, group=group)
            if run.train_size:
                train = train.subset(run.train_size, data.seed)
        else:
            train = data.load("train", info, limit=run.train_size, stream=train_stream, group=group)
        test = None if test_stream is None else data.load("test", info, limit=run.eval_size, stream=test_stream,
                                                          group=group)
        init = _init_state(run, train) if run.init_weights is not None else None
        training_meta = {**cfg.to_dict(), "dataset": data.dataset, "train_size": len(train), "world_size": world,
                         "command": run.command}
        if train_stream is not None:
            training_meta["streamed"] = True
        was_streamed = bool(obj["meta"].get("training", {}).get("streamed", False)) if obj is not None else None
        if obj is not None and was_streamed != (train_stream is not None):
            raise UATError(f"cannot resume: the checkpoint was trained on data "
                           f"{'streamed from disk' if was_streamed else 'decoded into memory'} (another augmentation); "
                           f"run with --stream {'on' if was_streamed else 'off'}")
        if init is not None:
            training_meta["init_weights"] = init["source"]
        if obj is not None and obj["meta"].get("training", {}).get("train_size", len(train)) != len(train):
            raise UATError(f"cannot resume: the checkpoint was trained on "
                           f"{obj['meta']['training']['train_size']} images, not {len(train)} (--train-size)")
        trainer = make_trainer(run.arch, train, cfg, device, checkpoint_fn=lambda tr: save_checkpoint(
            ckpt_path, tr.model, meta_for(run.arch, train, training_meta), tr.state()))
        if init is not None and obj is None:
            trainer.model.net.load_state_dict(init["state_dict"])
        if obj is not None:
            trainer.load_state(obj["extra"])          # refuses another configuration: nothing written yet
            trainer.model.net.load_state_dict(obj["state_dict"])
            if rank == 0:
                print(f"resuming at step {trainer.step_i}/{trainer.total} (epoch {trainer.epoch_i}/{cfg.epochs})",
                      file=sys.stderr)

        def on_signal(signum, frame):
            if trainer.stopping:
                raise KeyboardInterrupt
            trainer.stop()
            if rank == 0:
                print("\nstopping after this step to save a checkpoint (Ctrl-C again aborts)", file=sys.stderr)

        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            res = trainer.run(progress=not data.quiet and rank == 0,
                              desc=run.progress_desc or f"train {cfg.algorithm}")
        except KeyboardInterrupt:
            if rank == 0:
                where = f"the checkpoint of epoch {trainer.epoch_i} is in {ckpt_path}" if ckpt_path.is_file() \
                    else "no checkpoint was saved"
                print(f"\naborted: {where}", file=sys.stderr)
            return TrainOutcome(130)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        if res.stopped_early:
            ok = True                                 # every rank stopped at the same step
            if rank == 0:
                print(f"interrupted at step {res.steps}/{trainer.total}: saved {ckpt_path}; run the same "
                      "command with --resume to continue", file=sys.stderr)
            return TrainOutcome(130)
        # every rank scores its shard of the test split with rank 0's model (the one written); the counts are
        # summed (in-memory: rank 0 decodes first)
        if group is not None:
            group.copy_from_first(trainer.model)
        if test is None:
            test = data.load("test", info, limit=run.eval_size, stream=None, group=group)
        # a streamed test split is scored a training minibatch at a time: inference holds less per image than
        # training, so the evaluation stays under the training's own peak memory (docs/benchmarks.md)
        m = evaluate_data(trainer.model, test, None, test.num_classes, device=device, group=group,
                          stream_batch=cfg.batch_size)
        ok = True                                     # every rank finished training and evaluating together
        if rank != 0:
            return TrainOutcome(0)                    # only rank 0 reports and writes

        metrics = {"dataset": data.dataset, "model": run.arch, "algorithm": cfg.algorithm,
                   "epochs": res.epochs_done, "steps": res.steps, "seconds": res.seconds,
                   "passes": res.passes, "train_size": len(train), "world_size": world}
        if res.rank_spread is not None:
            metrics["rank_spread"] = res.rank_spread   # max |difference| of δ and weights across processes
        metrics.update(clean_top1=m["clean_top1"], clean_top5=m["clean_top5"], eval_size=m["n"])
        if train_stream is not None or test_stream is not None:
            metrics["streamed"] = {"train": train_stream is not None, "test": test_stream is not None}
        if run.report:
            rep = robustness_report(trainer.model, train, test, run.report_eps_value, run.report_attack_size,
                                    run.report_attack_epochs, protocol.BETA, data.seed, device,
                                    progress=not data.quiet, norm=cfg.norm)
            rep.pop("delta")
            metrics.update(robust_top1=rep["robust_top1"], robust_top5=rep["robust_top5"], robustness=rep)
        metrics["config"] = cfg.to_dict()
        metrics["history"] = res.history
        # the final set replaces an old one whole (--force; checked before training); checkpoint.pt stays
        with output_set(out, ["model.pt", "metrics.json", "delta.pt"], force=True) as stage:
            if res.delta is not None:
                delta = res.delta
                atomic_write(stage / "delta.pt", lambda tmp: torch.save(delta, tmp))
            save_checkpoint(stage / "model.pt", trainer.model, meta_for(run.arch, train, training_meta,
                                                                       {k: metrics[k] for k in metrics
                                                                        if k in ("clean_top1", "robust_top1")}))
            write_json(stage / "metrics.json", metrics)
        rob = f", robust top-1 {100 * metrics['robust_top1']:.1f}%" if "robust_top1" in metrics else ""
        print(f"{cfg.algorithm}: clean top-1 {100 * metrics['clean_top1']:.1f}%{rob} "
              f"({res.seconds:.1f} s of training); wrote {out}")
        return TrainOutcome(0, metrics)
    finally:
        distributed.finish(group, ok)     # leave together: a gloo peer closing early can abort the others' threads

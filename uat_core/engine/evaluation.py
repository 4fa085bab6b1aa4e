"""Accuracy with and without a universal perturbation: top-1, top-5, fooling ratio, per class.

All forward passes run batched under ``torch.inference_mode()``; images stay uint8 until their batch
is moved to the device. ``evaluate`` takes images in memory; ``evaluate_stream`` the same figures over a
split streamed from disk (``stream.FolderStream``: memory bounded whatever its size, each minibatch decoded
once for the clean pass and every δ); ``evaluate_data`` takes either, and under ``torchrun`` (``group``) scores
only this rank's contiguous shard of the images and sums the counts (correct, fooled, per class) across the
ranks: the figures are exactly those of one process over every image.
"""
from __future__ import annotations

import torch

from .constraints import apply
from .errors import UATError
from .stream import EVAL_BATCH, is_stream


@torch.inference_mode()
def predict(model, images: torch.Tensor, delta: torch.Tensor | None = None, batch_size: int = 500,
            device=None, topk: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k labels (N,k), softmax confidence of the top-1 (N,)) for x (+ δ). images: uint8 or float."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    d = None if delta is None else delta.to(device).float()
    tops, confs = [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device, non_blocking=True)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if d is not None:
            x = apply(x, d)
        logits = model(x)                                               # (B,K)
        k = min(topk, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        tops.append(top.cpu())
        confs.append(logits.softmax(1).gather(1, top[:, :1]).squeeze(1).cpu())
    model.train(was)
    return torch.cat(tops), torch.cat(confs)


def _acc(top: torch.Tensor, y: torch.Tensor, k: int) -> float:
    return (top[:, :k] == y[:, None]).any(1).float().mean().item()


def evaluate(model, images: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor | None = None,
             num_classes: int | None = None, batch_size: int = 500, device=None,
             target: int | None = None) -> dict:
    """Clean and (if δ is given) perturbed accuracy.

    Returns clean_top1, clean_top5, per_class_clean; with δ also perturbed_top1, perturbed_top5,
    per_class_perturbed and fooling_ratio (fraction of images whose top-1 prediction changed); with
    ``target`` also target_rate (fraction of non-target-class images predicted as the target).
    """
    labels = labels.cpu()
    K = num_classes or int(labels.max()) + 1
    top_c, _ = predict(model, images, None, batch_size, device)
    top_p = None if delta is None else predict(model, images, delta, batch_size, device)[0]
    return _figures(labels, top_c, top_p, K, target)


def _figures(labels: torch.Tensor, top_c: torch.Tensor, top_p: torch.Tensor | None, K: int,
             target: int | None) -> dict:
    """The dict of :func:`evaluate` from the top-k predictions (N,k) without and with δ."""
    out = {"n": len(labels), "clean_top1": _acc(top_c, labels, 1), "clean_top5": _acc(top_c, labels, 5),
           "per_class_clean": per_class(top_c[:, 0], labels, K)}
    if top_p is not None:
        out.update({"perturbed_top1": _acc(top_p, labels, 1), "perturbed_top5": _acc(top_p, labels, 5),
                    "per_class_perturbed": per_class(top_p[:, 0], labels, K),
                    "fooling_ratio": (top_p[:, 0] != top_c[:, 0]).float().mean().item()})
        if target is not None:
            m = labels != target
            out["target_rate"] = (top_p[m, 0] == target).float().mean().item() if m.any() else 0.0
    return out


@torch.inference_mode()
def _stream_predictions(model, data, deltas: list, batch_size: int = EVAL_BATCH, device=None
                        ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None:
    """(labels (N,), clean top-k (N,k), [top-k with each δ (N,k)]) of the images of a stream that decode;
    None when none does."""
    device = device or next(model.parameters()).device
    ds = [d.to(device).float() for d in deltas]
    was = model.training
    model.eval()
    labels: list[torch.Tensor] = []
    top_c: list[torch.Tensor] = []
    top_p: list[list[torch.Tensor]] = [[] for _ in ds]
    try:
        for x, y in data.iterate(data.plan(batch_size), pin=torch.device(device).type == "cuda"):
            if not len(y):
                continue
            x = x.to(device, non_blocking=True).float().div_(255)                   # (B,C,H,W)
            logits = model(x)                                                       # (B,K)
            k = min(5, logits.shape[1])
            top_c.append(logits.topk(k, dim=1).indices.cpu())
            for j, d in enumerate(ds):
                top_p[j].append(model(apply(x, d)).topk(k, dim=1).indices.cpu())
            labels.append(y)
    finally:
        model.train(was)
    if not labels:
        return None
    return torch.cat(labels), torch.cat(top_c), [torch.cat(p) for p in top_p]


def evaluate_stream(model, data, delta=None, num_classes: int | None = None, batch_size: int = EVAL_BATCH,
                    device=None, target: int | None = None):
    """:func:`evaluate` over a ``stream.FolderStream`` (the evaluation view), one minibatch decoded at a time.

    ``delta``: None, one (C,H,W) δ (returns one dict, as :func:`evaluate`) or a list of them (returns one dict
    per δ; each minibatch is decoded and classified clean once for all of them). Images that do not decode
    are skipped with a warning and left out of every figure (``n`` counts those measured)."""
    many = isinstance(delta, (list, tuple))
    deltas = list(delta) if many else ([] if delta is None else [delta])
    got = _stream_predictions(model, data, deltas, batch_size, device)
    if got is None:
        raise UATError(f"none of the {len(data)} images of {data.root} could be decoded")
    y, c, top_p = got
    K = num_classes or data.num_classes
    out = [_figures(y, c, p, K, target) for p in top_p] or [_figures(y, c, None, K, target)]
    return out if many else out[0]


def evaluate_data(model, data, delta=None, num_classes: int | None = None, device=None,
                  target: int | None = None, group=None, stream_batch: int = EVAL_BATCH):
    """:func:`evaluate` of an ``ImageData`` or :func:`evaluate_stream` of a ``FolderStream``; ``delta`` may be
    a list of δs (a list of dicts back). ``group`` (a :class:`uat_core.engine.distributed.Group`, under torchrun):
    every rank calls this with the same data and scores only its shard (see :func:`evaluate_sharded`).
    ``stream_batch``: the images a stream decodes and classifies at a time (per process), which sets the
    evaluation's peak memory at large image sizes (a training run passes its own minibatch)."""
    if group is not None and group.world > 1:
        return evaluate_sharded(model, data, group, delta, num_classes, device=device, target=target,
                                stream_batch=stream_batch)
    if is_stream(data):
        return evaluate_stream(model, data, delta, num_classes, stream_batch, device=device, target=target)
    if isinstance(delta, (list, tuple)):
        return [evaluate(model, data.images, data.labels, d, num_classes, device=device, target=target)
                for d in delta]
    return evaluate(model, data.images, data.labels, delta, num_classes, device=device, target=target)


# ---- several processes -------------------------------------------------------------------------

def _counts(labels: torch.Tensor, top_c: torch.Tensor, top_p: list[torch.Tensor], K: int,
            target: int | None) -> torch.Tensor:
    """The integers every figure of :func:`_figures` is a ratio of, in one int64 vector that ranks can add:
    [n, clean top-1, clean top-5, clean correct per class (K), images per class (K)] and, per δ,
    [top-1, top-5, correct per class (K), fooled, images not of the target class, sent to the target]."""
    def hits(top):
        return [int((top[:, 0] == labels).sum()), int((top[:, :5] == labels[:, None]).any(1).sum())]

    def per_cls(top):
        return torch.bincount(labels[top[:, 0] == labels], minlength=K)

    out = [torch.tensor([len(labels), *hits(top_c)]), per_cls(top_c), torch.bincount(labels, minlength=K)]
    for p in top_p:
        others = labels != target if target is not None else torch.zeros_like(labels, dtype=torch.bool)
        out += [torch.tensor(hits(p)), per_cls(p),
                torch.tensor([int((p[:, 0] != top_c[:, 0]).sum()), int(others.sum()),
                              int((p[others, 0] == target).sum()) if target is not None else 0])]
    return torch.cat([t.to(torch.int64) for t in out])


def _ratio(k, n) -> float:
    """k / n as float32 arithmetic gives it: the very value of ``.float().mean()`` over n flags, k of them set."""
    return (torch.tensor(float(k)) / torch.tensor(float(n))).item()


def _from_counts(c: torch.Tensor, n_deltas: int, K: int, target: int | None) -> list[dict]:
    """The dicts of :func:`evaluate` (one per δ; one without δ when there is none) from :func:`_counts`."""
    v = c.tolist()
    n, c1, c5 = v[:3]
    correct, count = v[3:3 + K], v[3 + K:3 + 2 * K]

    def per_class_of(right):
        return [None if m == 0 else _ratio(k, m) for k, m in zip(right, count)]
    clean = {"n": n, "clean_top1": _ratio(c1, n), "clean_top5": _ratio(c5, n),
             "per_class_clean": per_class_of(correct)}
    out, at = [], 3 + 2 * K
    for _ in range(n_deltas):
        p1, p5 = v[at:at + 2]
        right = v[at + 2:at + 2 + K]
        fooled, others, sent = v[at + 2 + K:at + 5 + K]
        d = {**clean, "perturbed_top1": _ratio(p1, n), "perturbed_top5": _ratio(p5, n),
             "per_class_perturbed": per_class_of(right), "fooling_ratio": _ratio(fooled, n)}
        if target is not None:
            d["target_rate"] = _ratio(sent, others) if others else 0.0
        out.append(d)
        at += 5 + K
    return out or [clean]


def evaluate_sharded(model, data, group, delta=None, num_classes: int | None = None, batch_size: int = 500,
                     device=None, target: int | None = None, stream_batch: int = EVAL_BATCH):
    """:func:`evaluate_data` under torchrun: this rank scores the contiguous shard ``group.span(len(data))`` of
    ``data`` (an ImageData, or a FolderStream: only the shard's files are decoded), the counts are summed
    across the ranks and every rank returns the figures of the whole of ``data`` (those of one process).
    Collective: every rank must call it with the same data, δs and arguments."""
    many = isinstance(delta, (list, tuple))
    deltas = list(delta) if many else ([] if delta is None else [delta])
    K = num_classes or data.num_classes
    a, b = group.span(len(data))
    got = None
    if b > a:
        if is_stream(data):
            got = _stream_predictions(model, data.part(a, b), deltas, stream_batch, device=device)
        else:
            images = data.images[a:b]
            y = data.labels[a:b].cpu()
            top_c = predict(model, images, None, batch_size, device)[0]
            got = y, top_c, [predict(model, images, d, batch_size, device)[0] for d in deltas]
    if got is None:                                     # an empty shard, or none of its files decoded
        empty = torch.zeros((0, 1), dtype=torch.int64)
        got = torch.zeros((0,), dtype=torch.int64), empty, [empty for _ in deltas]
    counts = group.sum(_counts(*got, K, target))
    if int(counts[0]) == 0:
        where = f" of {data.root}" if is_stream(data) else ""
        raise UATError(f"none of the {len(data)} images{where} could be decoded")
    out = _from_counts(counts, len(deltas), K, target)
    return out if many else out[0]


def per_class(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy of each class (None for a class with no images)."""
    correct = torch.bincount(labels[pred == labels], minlength=num_classes).float()
    count = torch.bincount(labels, minlength=num_classes).float()
    return [None if c == 0 else (k / c).item() for k, c in zip(correct, count)]

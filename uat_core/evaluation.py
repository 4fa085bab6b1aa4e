"""Accuracy with and without a universal perturbation: top-1, top-5, fooling ratio, per class.

All forward passes run batched under ``torch.inference_mode()``; images stay uint8 until their batch
is moved to the device. ``evaluate`` takes images in memory; ``evaluate_stream`` the same figures over a
split streamed from disk (``stream.FolderStream``: memory bounded whatever its size, each minibatch decoded
once for the clean pass and every δ); ``evaluate_data`` takes either.
"""
from __future__ import annotations

import torch

from .constraints import apply


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
def evaluate_stream(model, data, delta=None, num_classes: int | None = None, batch_size: int = 256,
                    device=None, target: int | None = None):
    """:func:`evaluate` over a ``stream.FolderStream`` (the evaluation view), one minibatch decoded at a time.

    ``delta``: None, one (C,H,W) δ (returns one dict, as :func:`evaluate`) or a list of them (returns one dict
    per δ; each minibatch is decoded and classified clean once for all of them). Images that do not decode
    are skipped with a warning and left out of every figure (``n`` counts those measured)."""
    from .errors import UATError

    many = isinstance(delta, (list, tuple))
    deltas = list(delta) if many else ([] if delta is None else [delta])
    device = device or next(model.parameters()).device
    ds = [d.to(device).float() for d in deltas]
    was = model.training
    model.eval()
    labels, top_c, top_p = [], [], [[] for _ in ds]
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
        raise UATError(f"none of the {len(data)} images of {data.root} could be decoded")
    y = torch.cat(labels)
    K = num_classes or data.num_classes
    c = torch.cat(top_c)
    out = [_figures(y, c, torch.cat(p), K, target) for p in top_p] or [_figures(y, c, None, K, target)]
    return out if many else out[0]


def evaluate_data(model, data, delta=None, num_classes: int | None = None, device=None,
                  target: int | None = None):
    """:func:`evaluate` of an ``ImageData`` or :func:`evaluate_stream` of a ``FolderStream``; ``delta`` may be
    a list of δs (a list of dicts back)."""
    from .stream import is_stream

    if is_stream(data):
        return evaluate_stream(model, data, delta, num_classes, device=device, target=target)
    if isinstance(delta, (list, tuple)):
        return [evaluate(model, data.images, data.labels, d, num_classes, device=device, target=target)
                for d in delta]
    return evaluate(model, data.images, data.labels, delta, num_classes, device=device, target=target)


def per_class(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy of each class (None for a class with no images)."""
    correct = torch.bincount(labels[pred == labels], minlength=num_classes).float()
    count = torch.bincount(labels, minlength=num_classes).float()
    return [None if c == 0 else (k / c).item() for k, c in zip(correct, count)]

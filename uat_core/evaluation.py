"""Accuracy with and without a universal perturbation: top-1, top-5, fooling ratio, per class.

All forward passes run batched under ``torch.inference_mode()``; images stay uint8 until their batch
is moved to the device.
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
    out = {"n": len(labels), "clean_top1": _acc(top_c, labels, 1), "clean_top5": _acc(top_c, labels, 5),
           "per_class_clean": per_class(top_c[:, 0], labels, K)}
    if delta is not None:
        top_p, _ = predict(model, images, delta, batch_size, device)
        out.update({"perturbed_top1": _acc(top_p, labels, 1), "perturbed_top5": _acc(top_p, labels, 5),
                    "per_class_perturbed": per_class(top_p[:, 0], labels, K),
                    "fooling_ratio": (top_p[:, 0] != top_c[:, 0]).float().mean().item()})
        if target is not None:
            m = labels != target
            out["target_rate"] = (top_p[m, 0] == target).float().mean().item() if m.any() else 0.0
    return out


def per_class(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy of each class (None for a class with no images)."""
    correct = torch.bincount(labels[pred == labels], minlength=num_classes).float()
    count = torch.bincount(labels, minlength=num_classes).float()
    return [None if c == 0 else (k / c).item() for k, c in zip(correct, count)]

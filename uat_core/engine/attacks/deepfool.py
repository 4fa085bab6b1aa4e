"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016), https://arxiv.org/abs/1511.04599 — batched.

For each image, repeatedly linearise the classifier around the current point and take the smallest
step that crosses the nearest linearised decision boundary among the ``candidates`` most likely classes:

    w_k = ∇f_k(x) − ∇f_k̂(x),   f'_k = f_k(x) − f_k̂(x)
    ℓ2:  l = argmin_k |f'_k| / ‖w_k‖₂,   r = |f'_l| / ‖w_l‖₂² · w_l
    ℓ∞:  l = argmin_k |f'_k| / ‖w_k‖₁,   r = |f'_l| / ‖w_l‖₁ · sign(w_l)

Batched: one forward for the whole batch and, for all candidate classes at once, one vectorised backward
(``torch.autograd.grad(..., is_grads_batched=True)``: the gradient of Σ_b f_k(x_b) w.r.t. the batch gives
every image's ∇f_k, as images do not interact in eval mode), with the weights frozen. ``batched=False``
takes one backward per candidate class instead (the reference the tests compare against); the default,
``batched=None``, vectorises on CUDA only: on a CPU an ad-hoc check found the vectorised backward slower than
the loop (``bench/bench_strong.py`` prints the ratio). Images stop as soon as their label flips.

Example::

    r, fooled, iters = deepfool(model, x, norm="l2")    # x: (B,C,H,W) in [0,1]; r: (B,C,H,W)
"""
from __future__ import annotations

import torch

from ..models import frozen


def deepfool(model: torch.nn.Module, x: torch.Tensor, norm: str = "l2", candidates: int = 10,
             max_iter: int = 20, overshoot: float = 0.02, batched: bool | None = None):
    """Minimal perturbations r (B,C,H,W) with f(clamp(x + r)) ≠ f(x), as far as ``max_iter`` allows.

    Returns (r, fooled (B,) bool, class gradients taken, i.e. backward passes of the per-class loop).
    Call inside or outside ``frozen(model)``.
    """
    with frozen(model):
        return deepfool_frozen(model, x, norm, candidates, max_iter, overshoot, batched)


def _class_grads(f: torch.Tensor, xa: torch.Tensor, batched: bool) -> torch.Tensor:
    """∇_x f[:, j] for every candidate j: (b,nc,C,H,W). f: (b,nc) logits of the candidates at xa."""
    nc = f.shape[1]
    if batched:
        eye = torch.eye(nc, device=f.device, dtype=f.dtype)[:, None, :].expand(nc, *f.shape)   # (nc,b,nc)
        G, = torch.autograd.grad(f, xa, grad_outputs=eye, is_grads_batched=True)              # (nc,b,C,H,W)
        return G.transpose(0, 1)
    grads = []
    for j in range(nc):                                         # one backward per candidate class
        g, = torch.autograd.grad(f[:, j].sum(), xa, retain_graph=j < nc - 1)
        grads.append(g)
    return torch.stack(grads, 1)


def deepfool_frozen(model, x, norm, candidates, max_iter, overshoot, batched=None):
    if batched is None:
        batched = x.is_cuda
    B = x.shape[0]
    with torch.no_grad():
        logits0 = model(x)                                      # (B,K)
    K = logits0.shape[1]
    nc = min(candidates, K)
    cand = logits0.argsort(dim=1, descending=True)[:, :nc]      # (B,nc); cand[:,0] = original label
    k0 = cand[:, 0]
    r_tot = torch.zeros_like(x)                                 # (B,C,H,W)
    active = torch.ones(B, dtype=torch.bool, device=x.device)
    backwards = 0
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = (x[idx] + (1 + overshoot) * r_tot[idx]).clamp(0, 1).requires_grad_(True)
        logits = model(xa)                                      # (b,K)
        pred = logits.argmax(1)
        flipped = pred != k0[idx]
        if flipped.all():
            active[idx] = False
            break
        c = cand[idx]                                           # (b,nc)
        f = logits.gather(1, c)                                 # (b,nc)
        G = _class_grads(f, xa, batched)                        # (b,nc,C,H,W)
        backwards += nc
        w = (G[:, 1:] - G[:, :1]).flatten(2)                    # (b,nc-1,D)
        fp = (f[:, 1:] - f[:, :1]).detach().abs()               # (b,nc-1)
        if norm == "l2":
            wn = w.norm(dim=2).clamp_min(1e-12)
            dist = fp / wn
            k = dist.argmin(1)
            wl = w[torch.arange(len(k)), k]                     # (b,D)
            r = (dist.gather(1, k[:, None]) + 1e-4) * wl / wn.gather(1, k[:, None])
        else:
            wn = w.abs().sum(2).clamp_min(1e-12)
            dist = fp / wn
            k = dist.argmin(1)
            wl = w[torch.arange(len(k)), k]
            r = (dist.gather(1, k[:, None]) + 1e-4) * wl.sign()
        r = r.view(-1, *x.shape[1:]).detach()
        keep = ~flipped                                         # only images not yet fooled move
        r_tot[idx[keep]] += r[keep]
        active[idx[flipped]] = False
    with torch.no_grad():
        fooled = model((x + (1 + overshoot) * r_tot).clamp(0, 1)).argmax(1) != k0
    return (1 + overshoot) * r_tot, fooled, backwards

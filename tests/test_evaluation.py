"""evaluate() and predict() against hand computations on tiny models."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from uat_core.engine.evaluation import evaluate, per_class, predict


class PixelsAreLogits(nn.Module):
    """A (N,1,1,K) image's pixels are its logits: predictions can be read off the pixels by eye."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.flatten(1) * self.scale


def test_hand_computed_example():
    # 4 images with 3 "pixels" = 3 class scores; labels chosen so that clean predictions are 0, 1, 2, 1
    x = torch.tensor([[0.9, 0.1, 0.0],
                      [0.2, 0.8, 0.3],
                      [0.1, 0.2, 0.7],
                      [0.3, 0.6, 0.5]]).view(4, 1, 1, 3)
    y = torch.tensor([0, 1, 2, 2])
    delta = torch.tensor([0.0, 0.0, 0.45]).view(1, 1, 3)     # pushes every image toward class 2
    # clean: preds 0,1,2,1 -> right, right, right, wrong : top-1 = 3/4
    # perturbed (class-2 score + 0.45, clamped to 1):
    #   image 0: (0.9, 0.1, 0.45) -> 0   right
    #   image 1: (0.2, 0.8, 0.75) -> 1   right
    #   image 2: (0.1, 0.2, 1.0)  -> 2   right
    #   image 3: (0.3, 0.6, 0.95) -> 2   right (label 2)     perturbed top-1 = 4/4
    # fooling ratio: predictions that changed = image 3 only = 1/4
    # top-2 on clean: image 3's second choice is class 2 -> top-2 would be 4/4; with K=3, top-5 = top-3 = 1
    m = evaluate(PixelsAreLogits(), x, y, delta, num_classes=3, batch_size=3)
    assert m["n"] == 4
    assert m["clean_top1"] == pytest.approx(0.75)
    assert m["perturbed_top1"] == pytest.approx(1.0)
    assert m["fooling_ratio"] == pytest.approx(0.25)
    assert m["clean_top5"] == pytest.approx(1.0) and m["perturbed_top5"] == pytest.approx(1.0)
    # per class: class 0 {img0} 1/1, class 1 {img1} 1/1, class 2 {img2 right, img3 wrong} 1/2
    assert m["per_class_clean"] == pytest.approx([1.0, 1.0, 0.5])
    assert m["per_class_perturbed"] == pytest.approx([1.0, 1.0, 1.0])
    # targeted toward 2: images not of class 2 are 0 and 1, neither predicted 2 after δ -> 0
    assert evaluate(PixelsAreLogits(), x, y, delta, 3, target=2)["target_rate"] == pytest.approx(0.0)
    # toward 1: non-class-1 images are 0, 2, 3; after δ none is predicted 1 -> 0
    assert evaluate(PixelsAreLogits(), x, y, delta, 3, target=1)["target_rate"] == pytest.approx(0.0)
    # toward 0: non-class-0 images are 1, 2, 3; lifting class 0 by 0.55 gives (0.75 < 0.8), (0.65 < 0.7),
    # (0.85 > 0.6): only image 3 moves to class 0 -> 1/3
    lift0 = torch.tensor([0.55, 0.0, 0.0]).view(1, 1, 3)
    assert evaluate(PixelsAreLogits(), x, y, lift0, 3, target=0)["target_rate"] == pytest.approx(1 / 3)
    # a clean-only call has no target rate
    assert "target_rate" not in evaluate(PixelsAreLogits(), x, y, None, 3, target=1)

    top, conf = predict(PixelsAreLogits(), x, delta, topk=2)
    assert top.tolist() == [[0, 2], [1, 2], [2, 1], [2, 1]]
    want_conf = math.exp(0.9) / (math.exp(0.9) + math.exp(0.1) + math.exp(0.45))
    assert float(conf[0]) == pytest.approx(want_conf, rel=1e-5)


def reference(W, b, images, labels, delta, K):
    """Plain-Python evaluation of a linear model: lists and loops, no batching."""
    def preds(imgs, shift):
        out = []
        for img in imgs:
            flat = [min(1.0, max(0.0, v + d)) for v, d in zip(img, shift)]
            scores = [sum(w * v for w, v in zip(W[k], flat)) + b[k] for k in range(K)]
            out.append(sorted(range(K), key=lambda k: -scores[k]))
        return out

    def acc(p, k):
        return sum(lab in r[:k] for r, lab in zip(p, labels)) / len(labels)

    pc = preds(images, [0.0] * len(images[0]))
    res = {"clean_top1": acc(pc, 1), "clean_top5": acc(pc, 5)}
    res["per_class_clean"] = [
        (sum(r[0] == lab for r, lab in zip(pc, labels) if lab == c) / labels.count(c)) if c in labels else None
        for c in range(K)]
    if delta is not None:
        pp = preds(images, delta)
        res.update(perturbed_top1=acc(pp, 1), perturbed_top5=acc(pp, 5),
                   fooling_ratio=sum(a[0] != c[0] for a, c in zip(pp, pc)) / len(labels))
    return res


@pytest.mark.parametrize("seed", range(4))
def test_matches_plain_reference_on_a_random_linear_model(seed):
    g = torch.Generator().manual_seed(seed)
    K, N = 7, 23
    lin = nn.Linear(4, K)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(K, 4, generator=g) * 3)
        lin.bias.copy_(torch.randn(K, generator=g))
    model = nn.Sequential(nn.Flatten(), lin)
    images = torch.rand(N, 1, 2, 2, generator=g)
    labels = torch.randint(0, K - 1, (N,), generator=g)       # class K-1 never occurs -> per-class None
    delta = (torch.rand(1, 2, 2, generator=g) - 0.5) * 0.6
    m = evaluate(model, images, labels, delta, num_classes=K, batch_size=5)
    ref = reference(lin.weight.tolist(), lin.bias.tolist(), images.flatten(1).tolist(), labels.tolist(),
                    delta.flatten().tolist(), K)
    for key in ("clean_top1", "clean_top5", "perturbed_top1", "perturbed_top5", "fooling_ratio"):
        assert m[key] == pytest.approx(ref[key], abs=1e-6), key
    assert m["per_class_clean"][K - 1] is None
    assert m["per_class_clean"] == pytest.approx(ref["per_class_clean"])


def test_uint8_and_float_inputs_agree_and_batch_size_does_not_matter():
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 4))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(4, 9, generator=g) * 4)
    images8 = torch.randint(0, 256, (31, 1, 3, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 4, (31,), generator=g)
    delta = (torch.rand(1, 3, 3, generator=g) - 0.5) * 0.8
    a = evaluate(model, images8, labels, delta, 4, batch_size=500)
    b = evaluate(model, images8.float() / 255, labels, delta, 4, batch_size=7)
    assert a["fooling_ratio"] > 0                       # δ changes something, so the comparison means something
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k]), k


def test_model_mode_is_restored_and_no_grad_is_kept():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    model.train()
    x = torch.rand(8, 1, 2, 2)
    running = model[2].running_mean.clone()
    top, conf = predict(model, x)
    assert model.training                                  # restored
    assert torch.equal(model[2].running_mean, running)     # evaluated in eval mode: BN stats untouched
    assert not conf.requires_grad and top.shape == (8, 3)
    assert ((conf > 0) & (conf <= 1)).all()


def test_per_class_counts():
    pred = torch.tensor([0, 0, 1, 2, 2, 2])
    lab = torch.tensor([0, 1, 1, 2, 2, 0])
    # class 0: images 0 (right), 5 (wrong); class 1: 1 (wrong), 2 (right); class 2: 3, 4 (right)
    assert per_class(pred, lab, 4)[:3] == pytest.approx([0.5, 0.5, 1.0])
    assert per_class(pred, lab, 4)[3] is None


@pytest.mark.slow
def test_zoo_model_numbers_match_the_manifest(digits_model, digits_test):
    """The shipped model's clean accuracy on the digits test split is what the manifest records."""
    import json
    from conftest import ZOO
    manifest = json.loads((ZOO / "manifest.json").read_text())["models"]["digits_smallcnn_natural"]
    m = evaluate(digits_model, digits_test.images, digits_test.labels)
    assert m["clean_top1"] == pytest.approx(manifest["clean_top1"], abs=1e-6)
    delta = torch.load(ZOO / manifest["perturbation"], weights_only=True)
    mp = evaluate(digits_model, digits_test.images, digits_test.labels, delta)
    assert mp["perturbed_top1"] == pytest.approx(manifest["perturbed_top1"], abs=1e-6)

"""Classifiers that take images in [0, 1]; input normalization lives inside the wrapper.

Architectures (``build_model(arch, ...)``):
- ``smallcnn``  a 4-conv CNN that trains on digits in seconds (~0.3 M parameters).
- ``resnet20``  He et al. 2016's CIFAR ResNet (3 stages × 3 basic blocks, 16/32/64 channels, 0.27 M).
- ``wrn32_10``  the paper's Wide ResNet 32-10 (Madry et al.'s CIFAR model; 46 M parameters, for GPUs).
- ``torchvision:<name>``  any torchvision ImageNet classifier, e.g. ``torchvision:resnet50``;
  ``pretrained=True`` asks torchvision for its published weights (needs internet once).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UATError

ARCHITECTURES = ("smallcnn", "resnet20", "wrn32_10", "torchvision:<name>")


class Normalized(nn.Module):
    """f(x) = net((x - mean) / std), x in [0, 1]. mean/std are buffers so they follow .to(device)."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N,C,H,W) in [0,1] -> logits (N,K)
        return self.net((x - self.mean) / self.std)


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),                                               # H/2
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),                                               # H/4
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNetCIFAR(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs; n = 3 gives ResNet-20."""

    def __init__(self, n: int = 3, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True))
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):                                   # (N,C,32,32)
        x = self.layers(self.stem(x))                       # (N,64,8,8)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class WideBlock(nn.Module):
    """Pre-activation wide block (Zagoruyko & Komodakis 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None if (stride == 1 and cin == cout) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.short is None else self.short(o))


class WideResNet(nn.Module):
    """WRN-depth-k; depth 32 and k = 10 give the paper's WRN 32-10 ((32-2)/6 = 5 blocks per stage)."""

    def __init__(self, depth: int = 32, widen: int = 10, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                layers.append(WideBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.layers(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _torchvision_net(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    import torchvision
    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise UATError(f"unknown torchvision model '{name}': see torchvision.models.list_models()") from None
    if pretrained:
        if num_classes != 1000:
            raise UATError("published torchvision weights are for the 1000 ImageNet classes")
        try:
            return builder(weights="DEFAULT")
        except Exception as e:  # no internet, no cache
            raise UATError(f"could not fetch torchvision weights for '{name}' ({type(e).__name__}): "
                           "connect once to download them, or train your own") from None
    return builder(weights=None, num_classes=num_classes)


def build_model(arch: str, num_classes: int = 10, in_channels: int = 3, mean=(0.5,), std=(0.5,),
                pretrained: bool = False) -> Normalized:
    """A :class:`Normalized` classifier of the named architecture (see the module docstring)."""
    if arch == "smallcnn":
        net = SmallCNN(in_channels, num_classes)
    elif arch == "resnet20":
        net = ResNetCIFAR(3, in_channels, num_classes)
    elif arch == "wrn32_10":
        net = WideResNet(32, 10, in_channels, num_classes)
    elif arch.startswith("torchvision:"):
        if in_channels != 3:
            raise UATError("torchvision ImageNet models need 3-channel images")
        net = _torchvision_net(arch.split(":", 1)[1], num_classes, pretrained)
    else:
        raise UATError(f"unknown model '{arch}': choose smallcnn, resnet20, wrn32_10 or torchvision:<name>")
    if len(mean) == 1 and in_channels > 1:
        mean, std = tuple(mean) * in_channels, tuple(std) * in_channels
    return Normalized(net, mean, std)


def check_arch(arch: str) -> str:
    if arch in ("smallcnn", "resnet20", "wrn32_10") or arch.startswith("torchvision:"):
        return arch
    raise UATError(f"unknown model '{arch}': choose smallcnn, resnet20, wrn32_10 or torchvision:<name>")


def frozen(model: nn.Module):
    """Context manager: eval mode and requires_grad off for every weight, restored on exit.

    An attack needs only ∂loss/∂δ; with the weights frozen autograd skips every weight-gradient
    kernel, which is most of the cost of a backward pass. A model that is already frozen (eval mode, no
    weight requiring a gradient: the app's models shared between sessions are frozen once at load) is not
    touched at all, so concurrent attacks on one shared model never toggle its flags under each other.
    """
    import contextlib

    @contextlib.contextmanager
    def ctx():
        was_training = model.training
        changed = [p for p in model.parameters() if p.requires_grad]
        if was_training:
            model.eval()
        for p in changed:
            p.requires_grad_(False)
        try:
            yield model
        finally:
            for p in changed:
                p.requires_grad_(True)
            if was_training:
                model.train(True)
    return ctx()


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no weight gradients, for good (a model shared read-only between users)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

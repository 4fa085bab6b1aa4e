"""Classifiers that take images in [0, 1]; input normalization lives inside the wrapper.

Architectures (``build_model(arch, ...)``):
- ``smallcnn``  a 4-conv CNN that trains on digits in seconds (~0.3 M parameters).
- ``resnet20``  He et al. 2016's CIFAR ResNet (3 stages × 3 basic blocks, 16/32/64 channels, 0.27 M).
  The family is ``resnet<6n+2>[_w<k>][_id]``: depth, k× the channels (``resnet20_w4``: 64/128/256, 4.3 M),
  and ``_id`` for He et al.'s parameter-free shortcuts (option A: subsample and zero-pad the channels)
  instead of 1×1-conv projections (option B, the default).
- ``wrn32_10``  the paper's Wide ResNet 32-10 (Madry et al.'s CIFAR model; 46 M parameters, for GPUs);
  ``wrn<d>_<k>`` is the family (``wrn16_8``: 11 M, ``wrn28_10``: 36 M; (d - 4) / 6 blocks a stage).
- ``torchvision:<name>``  any torchvision ImageNet classifier, e.g. ``torchvision:resnet50``;
  ``pretrained=True`` asks torchvision for its published weights (needs internet once).
"""
from __future__ import annotations

import contextlib
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UATError

ARCHITECTURES = ("smallcnn", "resnet20", "resnet<6n+2>[_w<k>][_id]", "wrn32_10", "wrn<d>_<k>", "torchvision:<name>")
_RESNET = re.compile(r"resnet(\d+)(?:_w(\d+))?(_id)?")
_WRN = re.compile(r"wrn(\d+)_(\d+)")
_UNKNOWN = "choose smallcnn, resnet20 (resnet<6n+2>[_w<k>][_id]), wrn32_10 (wrn<d>_<k>) or torchvision:<name>"


class Normalized(nn.Module):
    """f(x) = net((x - mean) / std), x in [0, 1]. mean/std are buffers so they follow .to(device)."""

    mean: torch.Tensor
    std: torch.Tensor

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


class PadShortcut(nn.Module):
    """He et al.'s option A: x[:, :, ::s, ::s] with the new channels zero (no parameters)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, cout - cin

    def forward(self, x):                                   # (N,cin,H,W) -> (N,cout,H/s,W/s)
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, identity: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = PadShortcut(cin, cout, stride) if identity else \
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNetCIFAR(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs; n = 3 gives ResNet-20. ``width`` k multiplies the 16/32/64 channels;
    ``identity`` picks parameter-free shortcuts (option A) over 1×1 projections (option B)."""

    def __init__(self, n: int = 3, in_channels: int = 3, num_classes: int = 10, width: int = 1,
                 identity: bool = False):
        super().__init__()
        w = 16 * width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU(inplace=True))
        layers, cin = [], w
        for cout, stride in ((w, 1), (2 * w, 2), (4 * w, 2)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1, identity))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(4 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):                                   # (N,C,32,32)
        x = self.layers(self.stem(x))                       # (N,64k,8,8)
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
    """WRN-depth-k with n blocks a stage; the paper's WRN 32-10 is n = 5 (Madry et al.'s naming)."""

    def __init__(self, n: int = 5, widen: int = 10, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
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
    import torchvision  # deferred: torchvision is slow to import and only the torchvision:<name> models need it
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


def parse_arch(arch: str) -> dict:
    """The family and hyperparameters of an architecture name, or a one-line UATError.

    >>> parse_arch("resnet20_w2_id")
    {'family': 'resnet', 'n': 3, 'width': 2, 'identity': True}
    """
    if arch == "smallcnn":
        return {"family": "smallcnn"}
    if arch.startswith("torchvision:") and len(arch) > len("torchvision:"):
        return {"family": "torchvision", "name": arch.split(":", 1)[1]}
    m = _RESNET.fullmatch(arch)
    if m:
        depth, width = int(m[1]), int(m[2] or 1)
        if depth < 8 or (depth - 2) % 6:
            raise UATError(f"a CIFAR ResNet's depth is 6n+2 (20, 32, 44, 56, 110), got {depth} in '{arch}'")
        if width < 1:
            raise UATError(f"the width multiplier must be at least 1, got {width} in '{arch}'")
        return {"family": "resnet", "n": (depth - 2) // 6, "width": width, "identity": bool(m[3])}
    m = _WRN.fullmatch(arch)
    if m:
        depth, widen = int(m[1]), int(m[2])
        if depth == 32:                        # the paper's (and Madry et al.'s) name for 5 blocks a stage
            n = 5
        elif depth >= 10 and (depth - 4) % 6 == 0:
            n = (depth - 4) // 6
        else:
            raise UATError(f"a Wide ResNet's depth is 6n+4 (16, 22, 28, 34) or 32, got {depth} in '{arch}'")
        if widen < 1:
            raise UATError(f"the width multiplier must be at least 1, got {widen} in '{arch}'")
        return {"family": "wrn", "n": n, "widen": widen}
    raise UATError(f"unknown model '{arch}': {_UNKNOWN}")


def arch_name(base: str, width: int = 1, shortcut: str = "projection") -> str:
    """The architecture name of ``base`` (a resnet name) with the CLI's --width and --shortcut applied."""
    if width < 1:
        raise UATError(f"--width must be at least 1, got {width}")
    if shortcut not in ("projection", "identity"):
        raise UATError(f"unknown shortcut '{shortcut}': choose projection or identity")
    spec = parse_arch(base)
    if width == 1 and shortcut == "projection":
        return base
    if spec["family"] != "resnet":
        raise UATError(f"--width and --shortcut apply to the resnet family, not '{base}'")
    width *= spec["width"]
    return (f"resnet{6 * spec['n'] + 2}" + (f"_w{width}" if width > 1 else "")
            + ("_id" if shortcut == "identity" or spec["identity"] else ""))


def build_model(arch: str, num_classes: int = 10, in_channels: int = 3, mean=(0.5,), std=(0.5,),
                pretrained: bool = False) -> Normalized:
    """A :class:`Normalized` classifier of the named architecture (see the module docstring)."""
    spec = parse_arch(arch)
    net: nn.Module
    if spec["family"] == "smallcnn":
        net = SmallCNN(in_channels, num_classes)
    elif spec["family"] == "resnet":
        net = ResNetCIFAR(spec["n"], in_channels, num_classes, spec["width"], spec["identity"])
    elif spec["family"] == "wrn":
        net = WideResNet(spec["n"], spec["widen"], in_channels, num_classes)
    else:
        if in_channels != 3:
            raise UATError("torchvision ImageNet models need 3-channel images")
        net = _torchvision_net(spec["name"], num_classes, pretrained)
    if len(mean) == 1 and in_channels > 1:
        mean, std = tuple(mean) * in_channels, tuple(std) * in_channels
    return Normalized(net, mean, std)


def check_arch(arch: str) -> str:
    parse_arch(arch)
    return arch


def frozen(model: nn.Module):
    """Context manager: eval mode and requires_grad off for every weight, restored on exit.

    An attack needs only ∂loss/∂δ; with the weights frozen autograd skips every weight-gradient
    kernel, which is most of the cost of a backward pass. A model that is already frozen (eval mode, no
    weight requiring a gradient: the app's models shared between sessions are frozen once at load) is not
    touched at all, so concurrent attacks on one shared model never toggle its flags under each other.
    """
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

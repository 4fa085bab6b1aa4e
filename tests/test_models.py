"""The architecture families: names parse to the right networks, and bad names are one-line errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from uat_core.engine.errors import UATError
from uat_core.engine.models import PadShortcut, arch_name, build_model, parse_arch


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet20_is_he_et_al_size_and_width_scales_channels():
    base, wide = build_model("resnet20"), build_model("resnet20_w2")
    assert 0.26e6 < n_params(base) < 0.28e6                       # He et al. 2016: 0.27 M
    assert base.net.fc.in_features == 64 and wide.net.fc.in_features == 128
    # conv weights grow k² (k = 2): BN and the classifier grow less, so between 3.5× and 4×
    assert 3.5 < n_params(wide) / n_params(base) < 4.0


def test_identity_shortcuts_have_no_parameters_and_zero_pad_the_new_channels():
    proj, ident = build_model("resnet20"), build_model("resnet20_id")
    shortcuts = [m for m in ident.modules() if isinstance(m, PadShortcut)]
    assert len(shortcuts) == 2                                     # the two stage transitions
    # the projection model has two 1×1 convs (16·32 + 32·64 weights) and their BNs more
    assert n_params(proj) - n_params(ident) == 16 * 32 + 32 * 64 + 2 * (32 + 64)
    x = torch.randn(2, 16, 8, 8)
    y = shortcuts[0](x)                                            # 16 -> 32 channels, stride 2
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert (y[:, 16:] == 0).all()
    out = ident(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,blocks", [("wrn32_10", 5), ("wrn16_8", 2), ("wrn28_10", 4)])
def test_wide_resnet_family_block_counts(name, blocks):
    assert parse_arch(name)["n"] == blocks


def test_arch_name_composes_the_cli_flags():
    assert arch_name("resnet20") == "resnet20"
    assert arch_name("resnet20", 4) == "resnet20_w4"
    assert arch_name("resnet32", 2, "identity") == "resnet32_w2_id"
    assert arch_name("resnet20_id", 1, "projection") == "resnet20_id"


@pytest.mark.parametrize("arch,width,shortcut,match", [
    ("resnet21", 1, "projection", "6n\\+2"), ("resnet20", 0, "projection", "at least 1"),
    ("resnet20", 1, "dense", "unknown shortcut"), ("smallcnn", 2, "projection", "resnet family"),
    ("wrn17_2", 1, "projection", "6n\\+4"), ("resnet20_w0", 1, "projection", "at least 1"),
    ("vgg", 1, "projection", "unknown model"), ("torchvision:", 1, "projection", "unknown model")])
def test_bad_architectures_are_one_line_errors(arch, width, shortcut, match):
    with pytest.raises(UATError, match=match) as e:
        arch_name(arch, width, shortcut)
    assert "\n" not in str(e.value)

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from edgefpn.models.backbones import BACKBONES, LevelSpec, resnet_fpn


@pytest.mark.parametrize("name", list(BACKBONES))
def test_advertised_output_shape_matches_actual(name: str) -> None:
    torch.manual_seed(0)
    backbone = resnet_fpn(name=name, fpn_channels=32).eval()
    spec = backbone.output_shape()
    assert spec == {
        "p3": (32, 8),
        "p4": (32, 16),
        "p5": (32, 32),
        "p6": (32, 64),
        "p7": (32, 128),
    }
    assert all(isinstance(s, LevelSpec) for s in spec.values())
    height, width = 256, 384
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, height, width))
    assert list(features) == list(spec)
    for level, (channels, stride) in spec.items():
        assert tuple(features[level].shape) == (1, channels, height // stride, width // stride), level


def test_levels_round_up_on_sizes_not_divisible_by_the_stride() -> None:
    backbone = resnet_fpn(name="resnet18", fpn_channels=32).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 100, 130))
    sizes = {level: tuple(f.shape[-2:]) for level, f in features.items()}
    assert sizes == {"p3": (13, 17), "p4": (7, 9), "p5": (4, 5), "p6": (2, 3), "p7": (1, 2)}


def test_without_extra_levels_returns_exactly_the_requested_levels() -> None:
    backbone = resnet_fpn(
        name="resnet18", fpn_channels=32, returned_levels=("p2", "p3", "p4"), extra_levels=False
    )
    assert backbone.output_shape() == {"p2": (32, 4), "p3": (32, 8), "p4": (32, 16)}
    with torch.no_grad():
        features = backbone.eval()(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "p2": (1, 32, 16, 16),
        "p3": (1, 32, 8, 8),
        "p4": (1, 32, 4, 4),
    }


def test_norm_choice_and_everything_trainable() -> None:
    trainable = resnet_fpn(name="resnet18", fpn_channels=32, norm="bn")
    frozen = resnet_fpn(name="resnet18", fpn_channels=32, norm="frozen_bn")
    assert any(isinstance(m, nn.BatchNorm2d) for m in trainable.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in trainable.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules())
    assert all(p.requires_grad for p in trainable.parameters())
    assert all(p.requires_grad for p in frozen.parameters())


def test_state_dict_layout_is_torchvisions() -> None:
    keys = list(resnet_fpn(name="resnet50", fpn_channels=256).state_dict())
    assert all(k.startswith(("body.", "fpn.")) for k in keys)
    assert "fpn.extra_blocks.p6.weight" in keys and "fpn.extra_blocks.p7.weight" in keys
    # torchvision reads P6 from P5 (LastLevelP6P7.use_P5) when in == out channels.
    backbone = resnet_fpn(name="resnet50", fpn_channels=256)
    assert backbone.fpn.extra_blocks.use_P5
    assert [b[0].in_channels for b in backbone.fpn.inner_blocks] == [512, 1024, 2048]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet101"}, "'resnet101'.*resnet18, resnet34, resnet50"),
        ({"norm": "gn"}, "'gn'.*bn, frozen_bn"),
        ({"fpn_channels": 0}, "got 0"),
        ({"returned_levels": ("p3", "p9")}, "p9"),
        ({"returned_levels": ("p4", "p3", "p5")}, "increasing"),
        ({"returned_levels": ("p3", "p4")}, "end with 'p5'"),
    ],
)
def test_invalid_arguments_raise_value_error_showing_the_value(kwargs: dict, message: str) -> None:
    args = {"name": "resnet18", "fpn_channels": 32, **kwargs}
    with pytest.raises(ValueError, match=message):
        resnet_fpn(**args)

"""ResNet + FPN backbones with P6/P7, laid out exactly like torchvision's detection backbones.

The state-dict keys are torchvision's (``body.*`` and ``fpn.*`` under the detector's ``backbone.``), so a
torchvision detection checkpoint loads unchanged. Unlike torchvision's ``resnet_fpn_backbone`` every layer
is trainable: we train from scratch, so nothing is frozen.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["BACKBONES", "NORMS", "LevelSpec", "ResNetFPN", "resnet_fpn"]

BACKBONES: dict[str, Callable[..., resnet.ResNet]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
}
NORMS: dict[str, type[nn.Module]] = {"bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d}

# Pyramid level -> the ResNet stage whose output feeds it (C2..C5 are layer1..layer4).
_LEVEL_TO_LAYER = {"p2": "layer1", "p3": "layer2", "p4": "layer3", "p5": "layer4"}


class LevelSpec(NamedTuple):
    """What one pyramid level carries: its channel count and its stride in input pixels."""

    channels: int
    stride: int


def level_stride(level: str) -> int:
    """``"p3"`` -> 8: level ``pK`` is ``2**K`` input pixels per cell."""
    return 2 ** int(level[1:])


class ResNetFPN(BackboneWithFPN):
    """torchvision's ``BackboneWithFPN`` that names its outputs ``p3``.. and advertises their shapes.

    Args:
        body: the ResNet trunk (its ``fc`` and ``avgpool`` are never run).
        returned_levels: the ResNet levels fed to the FPN, e.g. ``("p3", "p4", "p5")``.
        in_channels_list: the channels of those ResNet stages.
        out_channels: FPN channels of every output level.
        extra_levels: add P6 and P7 computed from P5, as torchvision's FCOS and RetinaNet do.
    """

    def __init__(
        self,
        body: resnet.ResNet,
        *,
        returned_levels: Sequence[str],
        in_channels_list: Sequence[int],
        out_channels: int,
        extra_levels: bool,
    ) -> None:
        super().__init__(
            body,
            return_layers={_LEVEL_TO_LAYER[level]: level for level in returned_levels},
            in_channels_list=list(in_channels_list),
            out_channels=out_channels,
            extra_blocks=LastLevelP6P7(out_channels, out_channels) if extra_levels else None,
        )
        if not extra_levels:
            # BackboneWithFPN swaps None for LastLevelMaxPool; we want exactly the returned levels.
            # LastLevelMaxPool has no parameters, so the state dict is unaffected either way.
            self.fpn.extra_blocks = None
        extra = ("p6", "p7") if extra_levels else ()
        self.levels: tuple[str, ...] = (*returned_levels, *extra)

    def output_shape(self) -> dict[str, LevelSpec]:
        """``{"p3": LevelSpec(channels, 8), ..., "p7": LevelSpec(channels, 128)}``, in output order."""
        return {level: LevelSpec(self.out_channels, level_stride(level)) for level in self.levels}

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:  # x: [N, 3, H, W]
        return super().forward(x)  # {"p3": [N, C, ceil(H/8), ceil(W/8)], ...}


_BASIC_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class _SlimResNet(resnet.ResNet):
    """torchvision's ResNet with BasicBlocks whose stage widths are ``width * (1, 2, 4, 8)``.

    torchvision fixes the stem at 64 channels; edge-sized variants (``width=32``) cost about a
    quarter of the FLOPs, which is what makes from-scratch CPU training in minutes possible.
    The module names match torchvision's, so only the shapes differ from a standard ResNet.
    """

    def __init__(self, layers: Sequence[int], *, width: int, norm_layer: type[nn.Module]) -> None:
        nn.Module.__init__(self)
        self._norm_layer = norm_layer
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(resnet.BasicBlock, width, layers[0])
        self.layer2 = self._make_layer(resnet.BasicBlock, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(resnet.BasicBlock, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(resnet.BasicBlock, 8 * width, layers[3], stride=2)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def resnet_fpn(
    *,
    name: str,
    fpn_channels: int,
    width: int = 64,
    returned_levels: Sequence[str] = ("p3", "p4", "p5"),
    extra_levels: bool = True,
    norm: str = "bn",
) -> ResNetFPN:
    """A ResNet-FPN backbone equal to torchvision's ``resnet_fpn_backbone`` with all layers trainable.

    Args:
        name: one of ``BACKBONES`` (``resnet18``, ``resnet34``, ``resnet50``).
        fpn_channels: channels of every FPN output level.
        returned_levels: increasing ResNet levels among ``p2``..``p5`` that feed the FPN.
        extra_levels: append P6/P7 (``LastLevelP6P7`` on P5, as torchvision's ``fcos_resnet50_fpn``).
        norm: ``"bn"`` for trainable ``BatchNorm2d`` (training from scratch) or ``"frozen_bn"`` for
            ``FrozenBatchNorm2d`` (the layout of torchvision's pretrained detectors).
        width: channels of the first ResNet stage; 64 is torchvision's network, smaller values give
            slim edge variants (``resnet18`` and ``resnet34`` only).

    Returns:
        The backbone; ``output_shape()`` lists its levels, channels and strides.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(BACKBONES)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    if isinstance(fpn_channels, bool) or not isinstance(fpn_channels, int) or fpn_channels <= 0:
        raise ValueError(f"fpn_channels must be a positive int, got {fpn_channels!r}")
    levels = tuple(returned_levels)
    if not levels or any(level not in _LEVEL_TO_LAYER for level in levels):
        raise ValueError(
            f"returned_levels must be a non-empty subset of {tuple(_LEVEL_TO_LAYER)}, got {levels}"
        )
    if list(levels) != sorted(set(levels), key=level_stride):
        raise ValueError(f"returned_levels must be strictly increasing, got {levels}")
    if extra_levels and levels[-1] != "p5":
        # LastLevelP6P7 names its outputs p6/p7 and reads the last FPN level, so that level must be P5.
        raise ValueError(f"extra_levels=True needs returned_levels to end with 'p5', got {levels}")

    if width == 64:
        body = BACKBONES[name](weights=None, norm_layer=NORMS[norm])
    elif name in _BASIC_LAYERS and isinstance(width, int) and width > 0 and width % 8 == 0:
        body = _SlimResNet(_BASIC_LAYERS[name], width=width, norm_layer=NORMS[norm])
    else:
        raise ValueError(
            f"width must be 64, or a positive multiple of 8 for {', '.join(_BASIC_LAYERS)}; "
            f"got width={width!r} for {name!r}"
        )
    # torchvision's rule: C5 has inplanes = 512 * expansion channels and each stage below has half.
    c2_channels = body.inplanes // 8
    in_channels_list = [c2_channels * 2 ** (int(level[1:]) - 2) for level in levels]
    return ResNetFPN(
        body,
        returned_levels=levels,
        in_channels_list=in_channels_list,
        out_channels=fpn_channels,
        extra_levels=extra_levels,
    )

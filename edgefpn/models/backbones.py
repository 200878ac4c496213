"""ResNet and MobileNetV3 + FPN backbones with P6/P7, laid out exactly like torchvision's detection backbones.

The state-dict keys are torchvision's (``body.*`` and ``fpn.*`` under the detector's ``backbone.``), so a
torchvision detection checkpoint loads unchanged. Unlike torchvision's ``resnet_fpn_backbone`` every layer
is trainable: we train from scratch, so nothing is frozen.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

from torch import Tensor, nn
from torchvision.models import mobilenetv3, resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = [
    "BACKBONES",
    "FPN_BACKBONES",
    "MOBILENET_LEVELS",
    "NORMS",
    "LastLevelMaxPoolNamed",
    "LevelSpec",
    "MobileNetFPN",
    "ResNetFPN",
    "backbone_fpn",
    "mobilenet_fpn",
    "resnet_fpn",
]

# The ResNet trunks of resnet_fpn; FPN_BACKBONES adds MobileNetV3 (mobilenet_fpn) for model.backbone.
BACKBONES: dict[str, Callable[..., resnet.ResNet]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
}
FPN_BACKBONES: tuple[str, ...] = (*BACKBONES, "mobilenet_v3_large")
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
        extra_levels: add P6 and P7, as torchvision's FCOS and RetinaNet do.
        p6_from: ``"p5"`` (P6 from the FPN's P5: ``fcos_resnet50_fpn``, ``retinanet_resnet50_fpn``) or
            ``"c5"`` (from the ResNet's C5: ``retinanet_resnet50_fpn_v2``).
    """

    def __init__(
        self,
        body: resnet.ResNet,
        *,
        returned_levels: Sequence[str],
        in_channels_list: Sequence[int],
        out_channels: int,
        extra_levels: bool,
        p6_from: str = "p5",
    ) -> None:
        if p6_from not in ("p5", "c5"):
            raise ValueError(f"p6_from must be 'p5' or 'c5', got {p6_from!r}")
        extra = None
        if extra_levels:
            extra = LastLevelP6P7(in_channels_list[-1] if p6_from == "c5" else out_channels, out_channels)
            # torchvision infers the source from in == out channels; a slim C5 can equal the FPN width
            extra.use_P5 = p6_from == "p5"
        super().__init__(
            body,
            return_layers={_LEVEL_TO_LAYER[level]: level for level in returned_levels},
            in_channels_list=list(in_channels_list),
            out_channels=out_channels,
            extra_blocks=extra,
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
    p6_from: str = "p5",
    norm: str = "bn",
) -> ResNetFPN:
    """A ResNet-FPN backbone equal to torchvision's ``resnet_fpn_backbone`` with all layers trainable.

    Args:
        name: one of ``BACKBONES`` (``resnet18``, ``resnet34``, ``resnet50``).
        fpn_channels: channels of every FPN output level.
        returned_levels: increasing ResNet levels among ``p2``..``p5`` that feed the FPN.
        extra_levels: append P6/P7 (``LastLevelP6P7``, as torchvision's ``fcos_resnet50_fpn``).
        p6_from: P6 from the FPN's ``"p5"`` (FCOS, RetinaNet v1) or the ResNet's ``"c5"`` (RetinaNet v2).
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
        p6_from=p6_from,
    )


# ---------------------------------------------------------------------------------------------------
# MobileNetV3-Large + FPN

# Index in ``mobilenet_v3_large().features`` -> output stride. Blocks 2, 4, 7 and 13 downsample.
_MNV3_STRIDES = {
    0: 2,
    1: 2,
    2: 4,
    3: 4,
    4: 8,
    5: 8,
    6: 8,
    7: 16,
    8: 16,
    9: 16,
    10: 16,
    11: 16,
    12: 16,
    13: 32,
    14: 32,
    15: 32,
    16: 32,
}
# The last block of the stride-8, -16 and -32 stages: P3..P5 for FCOS / RetinaNet (P6/P7 on top).
MOBILENET_LEVELS: dict[int, str] = {6: "p3", 12: "p4", 16: "p5"}


class LastLevelMaxPoolNamed(ExtraFPNBlock):
    """torchvision's ``LastLevelMaxPool`` (a stride-2 1x1 max-pool of the last level), named ``name``.

    It has no parameters, so the state dict is torchvision's whatever the name.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(
        self, results: list[Tensor], x: list[Tensor], names: list[str]
    ) -> tuple[list[Tensor], list[str]]:
        from torch.nn import functional as F

        return [*results, F.max_pool2d(results[-1], 1, 2, 0)], [*names, self.name]


class MobileNetFPN(BackboneWithFPN):
    """torchvision's ``BackboneWithFPN`` over ``mobilenet_v3_large().features``, as ``_mobilenet_extractor``
    builds it, with named levels and advertised shapes. Keys: ``body.<i>.*``, ``fpn.*``.

    Args:
        features: the MobileNetV3 ``features`` Sequential.
        return_layers: feature index -> level name, increasing indices.
        out_channels: FPN channels.
        extra: ``"p6p7"`` (``LastLevelP6P7`` from P5, for FCOS / RetinaNet), ``"pool"`` (a max-pool
            level, torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``) or ``None``.
        extra_names: the names of the extra levels (``("p6", "p7")`` / ``("pool",)``).
    """

    def __init__(
        self,
        features: nn.Sequential,
        *,
        return_layers: dict[int, str],
        out_channels: int,
        extra: str | None,
        extra_names: Sequence[str] = (),
        p6_from: str = "p5",
    ) -> None:
        if p6_from not in ("p5", "c5"):
            raise ValueError(f"p6_from must be 'p5' or 'c5', got {p6_from!r}")
        indices = list(return_layers)
        in_channels_list = [features[i].out_channels for i in indices]
        block: ExtraFPNBlock | None
        if extra == "p6p7":
            block = LastLevelP6P7(in_channels_list[-1] if p6_from == "c5" else out_channels, out_channels)
            block.use_P5 = p6_from == "p5"
        elif extra == "pool":
            block = LastLevelMaxPoolNamed(extra_names[0])
        elif extra is None:
            block = None
        else:
            raise ValueError(f"extra must be 'p6p7', 'pool' or None, got {extra!r}")
        super().__init__(
            features,
            return_layers={str(i): name for i, name in return_layers.items()},
            in_channels_list=in_channels_list,
            out_channels=out_channels,
            extra_blocks=block,
        )
        if block is None:
            self.fpn.extra_blocks = None  # BackboneWithFPN swaps None for LastLevelMaxPool (no parameters)
        last = _MNV3_STRIDES[indices[-1]]
        self._specs = {name: _MNV3_STRIDES[i] for i, name in return_layers.items()}
        self._specs |= {name: last * 2 ** (k + 1) for k, name in enumerate(extra_names)}

    def output_shape(self) -> dict[str, LevelSpec]:
        """Level name -> ``LevelSpec(channels, stride)``, in output order."""
        return {name: LevelSpec(self.out_channels, stride) for name, stride in self._specs.items()}

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:  # x: [N, 3, H, W]
        return super().forward(x)


def mobilenet_fpn(
    *,
    fpn_channels: int,
    norm: str = "bn",
    return_layers: dict[int, str] | None = None,
    extra: str | None = "p6p7",
    extra_names: Sequence[str] = ("p6", "p7"),
    p6_from: str = "p5",
) -> MobileNetFPN:
    """MobileNetV3-Large + FPN, with torchvision's module layout.

    The default (``MOBILENET_LEVELS`` + P6/P7) gives P3..P7 for FCOS / RetinaNet. torchvision's
    ``fasterrcnn_mobilenet_v3_large_fpn`` layout is ``return_layers={13: ..., 16: ...}`` (both stride
    32), ``extra="pool"`` with one name (stride 64).

    Args:
        fpn_channels: FPN channels of every output.
        norm: ``"bn"`` or ``"frozen_bn"`` (torchvision's pretrained detectors).
        return_layers: ``features`` index -> level name.
        extra: extra levels on top (see :class:`MobileNetFPN`).
        extra_names: their names.
        p6_from: with ``extra="p6p7"``, P6 from the FPN's ``"p5"`` or the last returned feature ``"c5"``.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    if isinstance(fpn_channels, bool) or not isinstance(fpn_channels, int) or fpn_channels <= 0:
        raise ValueError(f"fpn_channels must be a positive int, got {fpn_channels!r}")
    layers = dict(MOBILENET_LEVELS if return_layers is None else return_layers)
    if not layers or any(i not in _MNV3_STRIDES for i in layers) or list(layers) != sorted(set(layers)):
        raise ValueError(f"return_layers must map increasing indices in 0..16 to names, got {layers}")
    wanted = {"p6p7": 2, "pool": 1, None: 0}.get(extra, -1)
    if len(extra_names) != wanted:
        raise ValueError(f"extra={extra!r} needs {max(wanted, 0)} extra_names, got {list(extra_names)}")
    # torchvision passes norm_layer explicitly (BatchNorm2d or FrozenBatchNorm2d, eps 1e-5 both), which
    # replaces MobileNetV3's own BatchNorm2d(eps=0.001): the same here, so its checkpoints match exactly.
    features = mobilenetv3.mobilenet_v3_large(weights=None, norm_layer=NORMS[norm]).features
    return MobileNetFPN(
        features,
        return_layers=layers,
        out_channels=fpn_channels,
        extra=extra,
        extra_names=tuple(extra_names),
        p6_from=p6_from,
    )


def backbone_fpn(
    *,
    name: str,
    fpn_channels: int,
    norm: str = "bn",
    width: int = 64,
    p6_from: str = "p5",
) -> ResNetFPN | MobileNetFPN:
    """The P3..P7 FPN backbone ``name`` (any of ``FPN_BACKBONES``) for the one-stage detectors.

    ``width`` applies to the slim ResNets only.
    """
    if name not in FPN_BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(FPN_BACKBONES)}")
    if name == "mobilenet_v3_large":
        if width != 64:
            raise ValueError(f"backbone_width applies to resnet18/34 only, got {width} for {name!r}")
        return mobilenet_fpn(fpn_channels=fpn_channels, norm=norm, p6_from=p6_from)
    return resnet_fpn(
        name=name,
        fpn_channels=fpn_channels,
        returned_levels=("p3", "p4", "p5"),
        norm=norm,
        width=width,
        p6_from=p6_from,
    )

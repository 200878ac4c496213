"""ImageNet-pretrained backbones from a file (``model.backbone_weights``), with torchvision's conventions.

The file is a torchvision *classification* state dict, e.g. ``resnet50-0676ba61.pth`` as
``torchvision.models.resnet50(weights="IMAGENET1K_V1")`` would download it (nothing is downloaded
here): ``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ..., ``fc.*`` for the ResNets and
``features.0.0.weight``, ..., ``classifier.*`` for MobileNetV3. The classifier is ignored; every other
key must match the detector's ``backbone.body`` in name and shape, checked like ``model.weights``
(:func:`edgefpn.models.checkpoint.load_checked`, the first problems named).

Frozen stages follow torchvision's ``_resnet_fpn_extractor`` / ``_mobilenet_extractor``:
``trainable_layers`` counts trainable stages from the top (ResNet: layer4, layer3, layer2, layer1,
conv1(+bn1), 0..5; MobileNetV3: its 6 stages, 0..6), and with pretrained weights the backbone's
BatchNorm is ``FrozenBatchNorm2d`` (``edgefpn.models.registry`` builds it so).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from torch import Tensor, nn

from edgefpn.errors import CheckpointError
from edgefpn.models.checkpoint import load_checked, load_checkpoint

__all__ = [
    "DEFAULT_TRAINABLE_LAYERS",
    "freeze_backbone",
    "imagenet_to_body",
    "load_backbone_weights",
    "max_trainable_layers",
]

DEFAULT_TRAINABLE_LAYERS = 3  # torchvision's default for pretrained detection backbones


class _Family(NamedTuple):
    """Per family: the classifier keys ignored, and the prefix stripped to reach the detector's body keys."""

    ignore: tuple[str, ...]
    strip: str


_RESNET = _Family(ignore=("fc.",), strip="")
_MOBILENET = _Family(ignore=("classifier.",), strip="features.")
_RESNET_STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")


def _family(backbone: str) -> _Family:
    if backbone.startswith("resnet"):
        return _RESNET
    if backbone.startswith("mobilenet"):
        return _MOBILENET
    raise ValueError(f"no ImageNet layout known for backbone {backbone!r}")


def max_trainable_layers(backbone: str) -> int:
    """torchvision's ``_validate_trainable_layers`` maximum: 5 for a ResNet, 6 for MobileNetV3."""
    return 5 if _family(backbone) is _RESNET else 6


def imagenet_to_body(state_dict: dict[str, Tensor], *, backbone: str) -> dict[str, Tensor]:
    """A classification state dict -> the keys of the detector's ``backbone.body`` (classifier dropped).

    A key outside the family's layout (``features.`` for MobileNetV3) is kept as is, so that the key
    check reports it as unexpected.
    """
    fam = _family(backbone)
    out = {}
    for key, value in state_dict.items():
        if key.startswith(fam.ignore):
            continue
        strip = fam.strip
        out[key.removeprefix(strip) if strip and key.startswith(strip) else key] = value
    return out


def load_backbone_weights(model: nn.Module, path: str | os.PathLike[str], *, backbone: str) -> None:
    """Load the ImageNet classification weights in ``path`` into ``model.backbone.body``.

    Raises:
        CheckpointError: unreadable or unsafe file (``weights_only``), or keys / shapes that do not match
            the backbone (e.g. a resnet50 file for a resnet18 detector), the first problems named.
    """
    body = getattr(getattr(model, "backbone", None), "body", None)
    if not isinstance(body, nn.Module):
        raise ValueError(f"model has no backbone.body to load weights into: {type(model).__name__}")
    state = load_checkpoint(path)
    if state["format"] != "state_dict":
        raise CheckpointError(
            f"{path}: an edgefpn detector checkpoint, not an ImageNet backbone state dict "
            f"(use model.weights for it)"
        )
    load_checked(
        body,
        imagenet_to_body(state["state_dict"], backbone=backbone),
        where=f"{path} (model.backbone_weights for {backbone})",
    )


def freeze_backbone(model: nn.Module, *, backbone: str, trainable_layers: int) -> None:
    """Freeze all but the top ``trainable_layers`` stages of ``model.backbone.body``, as torchvision does."""
    top = max_trainable_layers(backbone)
    if isinstance(trainable_layers, bool) or not 0 <= trainable_layers <= top:
        raise ValueError(f"trainable_layers must be in 0..{top} for {backbone}, got {trainable_layers!r}")
    body = model.get_submodule("backbone.body")
    if _family(backbone) is _RESNET:
        train = list(_RESNET_STAGES[:trainable_layers])
        if trainable_layers == 5:
            train.append("bn1")
        for name, p in body.named_parameters():
            if not name.startswith(tuple(train)):
                p.requires_grad_(False)
        return
    blocks = list(body.children())  # features[0..16] (IntermediateLayerGetter keeps their order)
    stage_indices = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
    freeze_before = (
        len(blocks) if trainable_layers == 0 else stage_indices[len(stage_indices) - trainable_layers]
    )
    for b in blocks[:freeze_before]:
        for p in b.parameters():
            p.requires_grad_(False)

"""FCOS built from torchvision's own ``FCOS`` and ``FCOSHead``, on already-preprocessed images.

Using torchvision's classes unchanged keeps its training losses, its initialisation and its state-dict
layout: ``fcos(backbone_name="resnet50", num_classes=91, fpn_channels=256, head_convs=4,
norm="frozen_bn")`` has exactly the keys and shapes of ``torchvision.models.detection.fcos_resnet50_fpn``.
The only swap is ``model.transform`` (``edgefpn.models.transform.IdentityTransform``): our numpy
preprocessing letterboxes and normalises before the model, so the model itself must neither resize nor
normalise (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.nn import functional as F
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead

from edgefpn.models.backbones import backbone_fpn
from edgefpn.models.necks import AUX_LOSS_WEIGHT, attach_neck, build_detector
from edgefpn.models.outputs import (
    PerLevelExportWrapper,
    per_level_output_names,
    per_level_output_shapes,
    run_tower,
)

__all__ = [
    "FCOS_LEVELS",
    "FCOSExportWrapper",
    "fcos",
    "fcos_output_names",
    "fcos_output_shapes",
]

FCOS_LEVELS = ("p3", "p4", "p5", "p6", "p7")
_KINDS = ("cls", "box", "ctr")
# torchvision's FCOSClassificationHead / FCOSRegressionHead hard-code GroupNorm(32, C).
_HEAD_NORM_GROUPS = 32


def fcos(
    *,
    backbone_name: str = "resnet18",
    num_classes: int,
    fpn_channels: int = 256,
    head_convs: int = 4,
    norm: str = "bn",
    backbone_width: int = 64,
    score_thresh: float = 0.2,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    topk_candidates: int = 1000,
    center_sampling_radius: float = 1.5,
    neck: str = "fpn",
    aux_loss_weight: float = AUX_LOSS_WEIGHT,
) -> FCOS:
    """torchvision's FCOS on a ResNet-FPN (P3..P7) backbone, taking preprocessed images.

    ``model(images, targets)`` in train mode returns torchvision's loss dict (``classification``,
    ``bbox_regression``, ``bbox_ctrness``); in eval mode ``model(images)`` returns torchvision's
    detections with ``xyxy`` boxes in input pixels and labels ``0..num_classes-1``.

    Args:
        backbone_name: ``resnet18``, ``resnet34``, ``resnet50`` or ``mobilenet_v3_large``.
        num_classes: number of object classes (no background class: FCOS uses sigmoid scores).
        fpn_channels: FPN and head width; a multiple of 32 because the head uses ``GroupNorm(32, C)``.
        head_convs: conv + GroupNorm + ReLU blocks in each head tower (torchvision uses 4).
        norm: backbone norm, ``"bn"`` (trainable) or ``"frozen_bn"`` (torchvision's pretrained layout).
        backbone_width: first-stage width of the ResNet; 64 is torchvision's, 32 a slim edge variant.
        score_thresh, nms_thresh, detections_per_img, topk_candidates, center_sampling_radius:
            passed to torchvision's ``FCOS``.
        neck: ``"fpn"`` (torchvision's) or ``"augfpn"`` (:mod:`edgefpn.models.necks`: adds Residual
            Feature Augmentation and, in training, Consistent Supervision).
        aux_loss_weight: weight of the Consistent Supervision losses (``neck="augfpn"`` only).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if (
        isinstance(fpn_channels, bool)
        or not isinstance(fpn_channels, int)
        or fpn_channels <= 0
        or fpn_channels % _HEAD_NORM_GROUPS
    ):
        raise ValueError(
            f"fpn_channels must be a positive multiple of {_HEAD_NORM_GROUPS} "
            f"(the FCOS head uses GroupNorm({_HEAD_NORM_GROUPS}, C)), got {fpn_channels!r}"
        )
    if isinstance(head_convs, bool) or not isinstance(head_convs, int) or head_convs < 0:
        raise ValueError(f"head_convs must be an int >= 0, got {head_convs!r}")

    backbone = backbone_fpn(name=backbone_name, fpn_channels=fpn_channels, norm=norm, width=backbone_width)
    backbone = attach_neck(backbone, neck=neck)
    strides = [spec.stride for spec in backbone.output_shape().values()]
    # One square anchor per location whose side equals the level's stride: FCOS's "points".
    anchor_generator = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    head = FCOSHead(backbone.out_channels, 1, num_classes, num_convs=head_convs)
    return build_detector(
        FCOS,
        backbone,
        num_classes,
        neck=neck,
        aux_loss_weight=aux_loss_weight,
        anchor_generator=anchor_generator,
        head=head,
        center_sampling_radius=center_sampling_radius,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        topk_candidates=topk_candidates,
    )


# ---------------------------------------------------------------------------------------------------
# Export: cls_p3..p7, box_p3..p7, ctr_p3..p7


def _channels(num_classes: int) -> dict[str, int]:
    return {"cls": num_classes, "box": 4, "ctr": 1}  # in _KINDS order


def fcos_output_names(levels: Sequence[str] = FCOS_LEVELS) -> list[str]:
    """``["cls_p3", ..., "cls_p7", "box_p3", ..., "ctr_p7"]``: the wrapper's outputs, in order."""
    return per_level_output_names(_KINDS, levels)


def fcos_output_shapes(
    *,
    batch: int,
    input_size: int | tuple[int, int],
    num_classes: int,
    levels: Sequence[str] = FCOS_LEVELS,
) -> dict[str, tuple[int, ...]]:
    """The static shape of every output for an input ``[batch, 3, H, W]``, keyed by output name.

    Args:
        batch: images per batch ``N``.
        input_size: ``H`` (square) or ``(H, W)`` of the letterboxed input.
        num_classes: ``C``.
        levels: the pyramid levels, ``p3``..``p7`` by default.
    """
    return per_level_output_shapes(_channels(num_classes), batch=batch, input_size=input_size, levels=levels)


class FCOSExportWrapper(PerLevelExportWrapper):
    """Runs an FCOS model's backbone and head and returns the raw per-level tensors as one flat tuple.

    It calls the head's own submodules per level and skips torchvision's flatten / concat / decode /
    NMS, so the graph has no data-dependent control flow and only static shapes. The tuple layout is
    ``output_names(self.levels)`` whatever ``training`` says (BatchNorm still follows the mode, so
    export an ``eval()`` model).
    """

    branches = _KINDS

    def branch_channels(self) -> dict[str, int]:
        return _channels(self.num_classes)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:  # images: [N, 3, H, W]
        features = self.backbone(images)
        cls_head = self.head.classification_head
        reg_head = self.head.regression_head
        cls_out: list[Tensor] = []
        box_out: list[Tensor] = []
        ctr_out: list[Tensor] = []
        for level in self.levels:
            feature = features[level]  # [N, F, H/s, W/s]
            cls_out.append(cls_head.cls_logits(run_tower(cls_head.conv, feature)))  # [N, C, H/s, W/s]
            reg_feature = run_tower(reg_head.conv, feature)  # [N, F, H/s, W/s]
            box_out.append(F.relu(reg_head.bbox_reg(reg_feature)))  # [N, 4, H/s, W/s]
            ctr_out.append(reg_head.bbox_ctrness(reg_feature))  # [N, 1, H/s, W/s]
        return (*cls_out, *box_out, *ctr_out)

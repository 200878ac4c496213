"""RetinaNet built from torchvision's own ``RetinaNet`` and ``RetinaNetHead``, on already-preprocessed images.

``retinanet(backbone_name="resnet50", num_classes=91, fpn_channels=256, head_convs=4, norm="frozen_bn")``
has exactly the keys and shapes of ``torchvision.models.detection.retinanet_resnet50_fpn``, and
``retinanet_v2(..., norm="bn")`` those of ``retinanet_resnet50_fpn_v2`` (GroupNorm in the heads, P6/P7
from C5, GIoU box loss). As in ``fcos.py`` the only swap is ``model.transform``
(``transform.IdentityTransform``).
Anchors are torchvision's defaults (``edgefpn.postprocess.retinanet``: the numpy decoder uses the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead

from edgefpn.models.backbones import backbone_fpn
from edgefpn.models.necks import AUX_LOSS_WEIGHT, attach_neck, build_detector
from edgefpn.models.outputs import (
    PerLevelExportWrapper,
    per_level_output_names,
    per_level_output_shapes,
    run_tower,
)
from edgefpn.postprocess.retinanet import ANCHOR_RATIOS, NUM_ANCHORS, anchor_sizes

__all__ = [
    "RETINANET_LEVELS",
    "RetinaNetExportWrapper",
    "retinanet",
    "retinanet_output_names",
    "retinanet_output_shapes",
    "retinanet_v2",
]

RETINANET_LEVELS = ("p3", "p4", "p5", "p6", "p7")
_KINDS = ("cls", "box")
_TORCHVISION_HEAD_CONVS = 4  # RetinaNetHead hard-codes four conv blocks per tower
_GN_GROUPS = 32


def retinanet(
    *,
    backbone_name: str = "resnet18",
    num_classes: int,
    fpn_channels: int = 256,
    head_convs: int = 4,
    norm: str = "bn",
    backbone_width: int = 64,
    variant: str = "v1",
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 300,
    topk_candidates: int = 1000,
    neck: str = "fpn",
    aux_loss_weight: float = AUX_LOSS_WEIGHT,
) -> RetinaNet:
    """torchvision's RetinaNet on an FPN (P3..P7) backbone, taking preprocessed images.

    Args:
        backbone_name: ``resnet18``, ``resnet34``, ``resnet50`` or ``mobilenet_v3_large``.
        num_classes: object classes (sigmoid scores: no background class).
        fpn_channels: FPN and head width (a multiple of 32 for ``v2``'s ``GroupNorm(32, C)``).
        head_convs: conv blocks per head tower, 0..4 (torchvision: 4).
        norm: backbone norm, ``"bn"`` or ``"frozen_bn"``.
        backbone_width: first-stage width of the slim ResNets (64: torchvision's).
        variant: ``"v1"`` (``retinanet_resnet50_fpn``) or ``"v2"`` (``retinanet_resnet50_fpn_v2``:
            GroupNorm heads, P6 from C5, GIoU regression loss).
        score_thresh, nms_thresh, detections_per_img, topk_candidates: passed to torchvision's
            ``RetinaNet`` (its defaults); the deployed decode takes them from ``postprocess``.
        neck: ``"fpn"`` (torchvision's) or ``"augfpn"`` (:mod:`edgefpn.models.necks`: adds Residual
            Feature Augmentation and, in training, Consistent Supervision).
        aux_loss_weight: weight of the Consistent Supervision losses (``neck="augfpn"`` only).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if variant not in ("v1", "v2"):
        raise ValueError(f"variant must be 'v1' or 'v2', got {variant!r}")
    if isinstance(head_convs, bool) or not isinstance(head_convs, int) or not 0 <= head_convs <= 4:
        raise ValueError(f"head_convs must be an int in [0, {_TORCHVISION_HEAD_CONVS}], got {head_convs!r}")
    if (
        isinstance(fpn_channels, bool)
        or not isinstance(fpn_channels, int)
        or fpn_channels <= 0
        or (variant == "v2" and fpn_channels % _GN_GROUPS)
    ):
        raise ValueError(
            f"fpn_channels must be a positive int (a multiple of 32 for v2), got {fpn_channels!r}"
        )

    backbone = backbone_fpn(
        name=backbone_name,
        fpn_channels=fpn_channels,
        norm=norm,
        width=backbone_width,
        p6_from="c5" if variant == "v2" else "p5",
    )
    backbone = attach_neck(backbone, neck=neck)
    strides = [spec.stride for spec in backbone.output_shape().values()]
    anchor_generator = AnchorGenerator(
        tuple(anchor_sizes(s) for s in strides), (ANCHOR_RATIOS,) * len(strides)
    )
    norm_layer = partial(nn.GroupNorm, _GN_GROUPS) if variant == "v2" else None
    head = RetinaNetHead(backbone.out_channels, NUM_ANCHORS, num_classes, norm_layer=norm_layer)
    if head_convs != _TORCHVISION_HEAD_CONVS:
        # keep the first blocks: same names (conv.0..), same initialisation as torchvision's
        for tower in (head.classification_head, head.regression_head):
            tower.conv = nn.Sequential(*list(tower.conv)[:head_convs])
    if variant == "v2":
        head.regression_head._loss_type = "giou"  # as retinanet_resnet50_fpn_v2
    return build_detector(
        RetinaNet,
        backbone,
        num_classes,
        neck=neck,
        aux_loss_weight=aux_loss_weight,
        anchor_generator=anchor_generator,
        head=head,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
        topk_candidates=topk_candidates,
    )


def retinanet_v2(**kwargs) -> RetinaNet:
    """``retinanet(variant="v2", ...)``: the layout of torchvision's ``retinanet_resnet50_fpn_v2``."""
    return retinanet(variant="v2", **kwargs)


# ---------------------------------------------------------------------------------------------------
# Export: cls_p3..p7 [N, A*C, H/s, W/s], box_p3..p7 [N, A*4, H/s, W/s]


def _channels(num_classes: int) -> dict[str, int]:
    return {"cls": NUM_ANCHORS * num_classes, "box": NUM_ANCHORS * 4}  # in _KINDS order


def retinanet_output_names(levels: Sequence[str] = RETINANET_LEVELS) -> list[str]:
    """``["cls_p3", ..., "cls_p7", "box_p3", ..., "box_p7"]``."""
    return per_level_output_names(_KINDS, levels)


def retinanet_output_shapes(
    *,
    batch: int,
    input_size: int | tuple[int, int],
    num_classes: int,
    levels: Sequence[str] = RETINANET_LEVELS,
) -> dict[str, tuple[int, ...]]:
    """Static output shapes for an input ``[batch, 3, H, W]``, in output order."""
    return per_level_output_shapes(_channels(num_classes), batch=batch, input_size=input_size, levels=levels)


class RetinaNetExportWrapper(PerLevelExportWrapper):
    """A RetinaNet's backbone and head as one flat tuple of raw per-level tensors (no anchors, no decode).

    The head's towers run per level on the ``[N, F, H, W]`` map; torchvision's view / permute to
    ``[N, HWA, C]`` is left to the numpy decoder, so the graph is convolutions only.
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
        for level in self.levels:
            feature = features[level]  # [N, F, H/s, W/s]
            cls_out.append(cls_head.cls_logits(run_tower(cls_head.conv, feature)))  # [N, A*C, H/s, W/s]
            box_out.append(reg_head.bbox_reg(run_tower(reg_head.conv, feature)))  # [N, A*4, H/s, W/s]
        return (*cls_out, *box_out)

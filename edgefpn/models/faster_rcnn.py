"""Faster R-CNN with FPN built from torchvision's own ``FasterRCNN``, on already-preprocessed images.

torchvision's classes are used unchanged (``RegionProposalNetwork``/``RPNHead``, ``MultiScaleRoIAlign``,
``TwoMLPHead`` or ``FastRCNNConvFCHead``, ``FastRCNNPredictor``), so training losses, initialisation and
the state-dict layout are torchvision's: ``faster_rcnn(backbone_name="resnet50", num_classes=90,
fpn_channels=256, norm="frozen_bn")`` has exactly the keys and shapes of
``torchvision.models.detection.fasterrcnn_resnet50_fpn`` and ``variant="v2"`` those of
``fasterrcnn_resnet50_fpn_v2``.

Labels: edgefpn's labels are ``0..K-1`` for every detector (docs/ARCHITECTURE.md). Faster R-CNN's softmax
reserves class 0 for the background, so the predictor has ``K + 1`` outputs and object class ``k`` is
torchvision's label ``k + 1``. :class:`EdgeFasterRCNN` shifts target labels up by one in training and
detections down by one in eval, so callers only ever see ``0..K-1``. torchvision's COCO checkpoints
(``num_classes=91`` there, background included) are ``num_classes=90`` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from edgefpn.models.backbones import LastLevelMaxPoolNamed, ResNetFPN, level_stride, mobilenet_fpn, resnet_fpn
from edgefpn.models.necks import AUX_LOSS_WEIGHT, ConsistentSupervision, attach_neck, build_detector
from edgefpn.models.necks.soft_roi import SoftRoISelection, StaticRoIPool

__all__ = ["FASTER_RCNN_LEVELS", "VARIANTS", "AugEdgeFasterRCNN", "EdgeFasterRCNN", "faster_rcnn"]

FASTER_RCNN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
# fasterrcnn_mobilenet_v3_large_fpn: FPN on MobileNetV3 features 13 and 16, BOTH stride 32 (feature 13 is
# the block that downsamples to 32), plus the max-pool level. Levels are named by stride, so the second
# stride-32 level is "p5b"; its outputs are then not grouped per level by check (still compared whole).
MOBILENET_LEVELS = ("p5", "p5b", "p6")
MOBILENET_STRIDES = (32, 32, 64)
VARIANTS = ("v1", "v2")
# torchvision's RoI pooling resolution and sampling (MultiScaleRoIAlign defaults of FasterRCNN).
_ROI_SIZE = 7
_ROI_SAMPLING = 2


class EdgeFasterRCNN(FasterRCNN):
    """torchvision's ``FasterRCNN`` speaking edgefpn's labels ``0..K-1`` (see the module docstring).

    ``roi_levels`` names the pyramid levels RoIs are pooled from (the max-pool level is only for the RPN,
    as in torchvision).
    """

    levels: tuple[str, ...]
    roi_levels: tuple[str, ...]
    level_strides: dict[str, int]

    def forward(self, images, targets=None):
        if targets is not None:
            targets = [{**t, "labels": t["labels"] + 1} for t in targets]
        result = super().forward(images, targets)
        if self.training:
            return result  # the loss dict
        return [{**r, "labels": r["labels"] - 1} for r in result]


class AugEdgeFasterRCNN(ConsistentSupervision, EdgeFasterRCNN):
    """:class:`EdgeFasterRCNN` on an AugFPN neck: in training, the RPN and RoI losses are also computed
    on the pre-fusion laterals (``aux_*``, see ``edgefpn.models.necks.supervision``)."""


def _fpn_backbone(
    *, backbone_name: str, fpn_channels: int, norm: str, backbone_width: int, fpn_norm: bool
) -> ResNetFPN:
    backbone = resnet_fpn(
        name=backbone_name,
        fpn_channels=fpn_channels,
        returned_levels=FASTER_RCNN_LEVELS[:4],
        extra_levels=False,
        norm=norm,
        width=backbone_width,
    )
    if fpn_norm:
        # fasterrcnn_resnet50_fpn_v2: BatchNorm inside the FPN's 1x1 and 3x3 convs (keys `.0.weight`, `.1.*`).
        in_channels = [block[0].in_channels for block in backbone.fpn.inner_blocks]  # Conv2dNormActivation
        backbone.fpn = FeaturePyramidNetwork(in_channels, fpn_channels, norm_layer=nn.BatchNorm2d)
    backbone.fpn.extra_blocks = LastLevelMaxPoolNamed("p6")
    backbone.levels = FASTER_RCNN_LEVELS
    return backbone


def faster_rcnn(
    *,
    backbone_name: str = "resnet18",
    num_classes: int,
    fpn_channels: int = 256,
    norm: str = "bn",
    backbone_width: int = 64,
    variant: str = "v1",
    representation_size: int = 1024,
    rpn_pre_nms_top_n: int = 1000,
    rpn_post_nms_top_n: int = 1000,
    rpn_nms_thresh: float = 0.7,
    rpn_score_thresh: float = 0.0,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    neck: str = "fpn",
    aux_loss_weight: float = AUX_LOSS_WEIGHT,
) -> EdgeFasterRCNN:
    """torchvision's Faster R-CNN on a ResNet-FPN (P2..P5 + max-pool P6), taking preprocessed images.

    In train mode ``model(images, targets)`` returns torchvision's four losses; in eval mode
    ``model(images)`` returns detections with ``xyxy`` boxes in input pixels and labels ``0..K-1``.

    Args:
        backbone_name: ``resnet18``, ``resnet34``, ``resnet50`` or ``mobilenet_v3_large`` (the layout of
            ``fasterrcnn_mobilenet_v3_large_fpn``: RPN on two stride-32 maps and a stride-64 one, 15
            anchors per location; ``backbone_width`` does not apply).
        num_classes: object classes ``K``, background excluded (the predictor has ``K + 1`` outputs).
        fpn_channels: FPN, RPN and RoI feature width.
        norm: backbone norm, ``"bn"`` or ``"frozen_bn"`` (torchvision's pretrained v1 layout).
        backbone_width: first-stage width of the ResNet (64 is torchvision's).
        variant: ``"v1"`` (``fasterrcnn_resnet50_fpn``: one-conv RPN head, ``TwoMLPHead``) or ``"v2"``
            (``fasterrcnn_resnet50_fpn_v2``: BatchNorm FPN, two-conv RPN head, ``FastRCNNConvFCHead``
            with four BatchNorm convs).
        representation_size: width of the box head's fully connected layers (torchvision: 1024).
        rpn_pre_nms_top_n, rpn_post_nms_top_n: proposals kept per level before NMS and in all after it,
            at test time (also used for training, where torchvision defaults to 2000).
        rpn_nms_thresh, rpn_score_thresh, score_thresh, nms_thresh, detections_per_img: torchvision's
            ``FasterRCNN`` arguments of the same names (``box_`` prefix dropped for the last three).
        neck: ``"fpn"`` or ``"augfpn"``: AugFPN's Residual Feature Augmentation, Soft RoI Selection (RoI
            features from all RoI levels fused by learned spatial weights instead of the level rule)
            and, in training, Consistent Supervision (``edgefpn.models.necks``).
        aux_loss_weight: weight of the Consistent Supervision losses (``neck="augfpn"`` only).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    for name, value in (
        ("representation_size", representation_size),
        ("rpn_pre_nms_top_n", rpn_pre_nms_top_n),
        ("rpn_post_nms_top_n", rpn_post_nms_top_n),
        ("detections_per_img", detections_per_img),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    v2 = variant == "v2"
    box_settings: dict[str, Any] = {
        "num_classes": num_classes,
        "rpn_conv_depth": 2 if v2 else 1,
        "conv_fc_head": v2,
        "representation_size": representation_size,
        "rpn_pre_nms_top_n": rpn_pre_nms_top_n,
        "rpn_post_nms_top_n": rpn_post_nms_top_n,
        "rpn_nms_thresh": rpn_nms_thresh,
        "rpn_score_thresh": rpn_score_thresh,
        "score_thresh": score_thresh,
        "nms_thresh": nms_thresh,
        "detections_per_img": detections_per_img,
    }
    if backbone_name == "mobilenet_v3_large":
        if v2:
            raise ValueError(f"variant 'v2' exists for ResNet-50 only, got backbone {backbone_name!r}")
        if neck != "fpn":
            # Soft RoI Selection needs several RoI levels; this layout pools from one stride-32 map
            raise ValueError(
                f"neck {neck!r} is not available with {backbone_name!r} in faster_rcnn; use 'fpn'"
            )
        # fasterrcnn_mobilenet_v3_large_fpn's FPN reads the last two stages: the output of the last
        # stride-2 block (features[13]) and of the final 1x1 conv (features[16]), both stride 32
        backbone = mobilenet_fpn(
            fpn_channels=fpn_channels,
            norm=norm,
            return_layers=dict(zip((13, 16), MOBILENET_LEVELS[:2], strict=True)),
            extra="pool",
            extra_names=MOBILENET_LEVELS[2:],
        )
        return _assemble(
            backbone,
            levels=MOBILENET_LEVELS,
            strides=MOBILENET_STRIDES,
            # torchvision pools from maps "0".."3", i.e. both stride-32 maps, and its level rule, clamped
            # to [5, 5], always picks the first: pooling from "p5" alone is the same computation.
            roi_levels=("p5",),
            anchor_sizes=((32, 64, 128, 256, 512),) * len(MOBILENET_LEVELS),
            **box_settings,
        )
    backbone = _fpn_backbone(
        backbone_name=backbone_name,
        fpn_channels=fpn_channels,
        norm=norm,
        backbone_width=backbone_width,
        fpn_norm=v2,
    )
    backbone = attach_neck(backbone, neck=neck)
    return _assemble(
        backbone,
        levels=FASTER_RCNN_LEVELS,
        strides=tuple(level_stride(lvl) for lvl in FASTER_RCNN_LEVELS),
        roi_levels=FASTER_RCNN_LEVELS[:4],
        anchor_sizes=tuple((32 * 2**i,) for i in range(len(FASTER_RCNN_LEVELS))),
        **box_settings,
        neck=neck,
        aux_loss_weight=aux_loss_weight,
    )


def _assemble(
    backbone: BackboneWithFPN,
    *,
    levels: Sequence[str],
    strides: Sequence[int],
    roi_levels: Sequence[str],
    anchor_sizes: tuple[tuple[int, ...], ...],
    num_classes: int,
    rpn_conv_depth: int,
    conv_fc_head: bool,
    representation_size: int,
    rpn_pre_nms_top_n: int,
    rpn_post_nms_top_n: int,
    rpn_nms_thresh: float,
    rpn_score_thresh: float,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    neck: str = "fpn",
    aux_loss_weight: float = AUX_LOSS_WEIGHT,
) -> EdgeFasterRCNN:
    """The torchvision Faster R-CNN around ``backbone`` (shared by the ResNet and MobileNet layouts)."""
    channels = backbone.out_channels
    anchor_generator = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    rpn_head = RPNHead(channels, anchor_generator.num_anchors_per_location()[0], conv_depth=rpn_conv_depth)
    roi_pool = MultiScaleRoIAlign(
        featmap_names=list(roi_levels), output_size=_ROI_SIZE, sampling_ratio=_ROI_SAMPLING
    )
    if conv_fc_head:
        box_head: nn.Module = FastRCNNConvFCHead(
            (channels, _ROI_SIZE, _ROI_SIZE), [channels] * 4, [representation_size], norm_layer=nn.BatchNorm2d
        )
    else:
        box_head = TwoMLPHead(channels * _ROI_SIZE**2, representation_size)
    model = build_detector(
        EdgeFasterRCNN,
        backbone,
        neck=neck,
        aux_loss_weight=aux_loss_weight,
        augmented=AugEdgeFasterRCNN,
        num_classes=None,
        rpn_anchor_generator=anchor_generator,
        rpn_head=rpn_head,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n,
        rpn_nms_thresh=rpn_nms_thresh,
        rpn_score_thresh=rpn_score_thresh,
        box_score_thresh=score_thresh,
        box_nms_thresh=nms_thresh,
        box_detections_per_img=detections_per_img,
    )
    if neck == "augfpn":
        # FasterRCNN's constructor accepts only MultiScaleRoIAlign; RoIHeads itself takes any pooler with
        # its call signature. Forked RNG: with either neck one seed gives the same head weights.
        with torch.random.fork_rng(devices=[]):
            model.roi_heads.box_roi_pool = StaticRoIPool(
                SoftRoISelection(roi_levels, channels, output_size=_ROI_SIZE, sampling_ratio=_ROI_SAMPLING)
            )
    model.levels = tuple(levels)
    model.roi_levels = tuple(roi_levels)
    model.level_strides = dict(zip(levels, strides, strict=True))
    return model

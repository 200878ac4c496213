"""AugFPN's Soft RoI Selection for Faster R-CNN: RoI features from every level, fused by learned weights.

The FPN rule pools each RoI from one level (``k = floor(4 + log2(sqrt(wh) / 224))``), a hard choice
that ignores what the other levels know about the box. Soft RoI Selection pools every RoI from every
RoI level and merges the ``L`` results with Adaptive Spatial Fusion (a learned spatial weight map per
level, :class:`~edgefpn.models.necks.augfpn.AdaptiveSpatialFusion`), so the choice is learned.

Static by construction: RoIAlign of all ``R`` boxes on each level (ONNX ``RoiAlign``, as the plain
FPN export already does before masking), then Concat -> Conv -> Sigmoid -> Mul -> Add. The same module
runs in training (through :class:`StaticRoIPool`, torchvision's ``box_roi_pool`` call signature) and in
the export wrapper (``features`` list and ``[R, 5]`` RoIs, the seam of ``MultiLevelRoIAlign``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from edgefpn.models.backbones import level_stride
from edgefpn.models.necks.augfpn import AdaptiveSpatialFusion

__all__ = ["SoftRoISelection", "StaticRoIPool"]


class SoftRoISelection(nn.Module):
    """RoIAlign of every box on every level, merged by Adaptive Spatial Fusion.

    Args:
        levels: the RoI levels, finest first (``("p2", "p3", "p4", "p5")``); level ``pK`` has stride
            ``2**K``.
        channels: feature channels ``C`` of every level.
        output_size: pooled side ``S`` (torchvision's Faster R-CNN: 7).
        sampling_ratio: RoIAlign samples per bin side (torchvision: 2).
    """

    def __init__(
        self, levels: Sequence[str], channels: int, *, output_size: int = 7, sampling_ratio: int = 2
    ) -> None:
        super().__init__()
        if not levels:
            raise ValueError(f"levels must be non-empty, got {levels!r}")
        for name, value in (("output_size", output_size), ("sampling_ratio", sampling_ratio)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.levels = tuple(levels)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.fuse = AdaptiveSpatialFusion(channels, len(self.levels))
        for module in self.fuse.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        """``features`` one ``[N, C, H_l, W_l]`` per level; ``rois`` ``[R, 5]`` (batch index, x1, y1, x2,
        y2) in input pixels -> ``[R, C, S, S]``."""
        if len(features) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} feature levels, got {len(features)}")
        per_level = [
            roi_align(
                feature,
                rois,
                output_size=self.output_size,
                spatial_scale=1.0 / level_stride(level),
                sampling_ratio=self.sampling_ratio,
                aligned=False,  # torchvision's MultiScaleRoIAlign
            )  # [R, C, S, S]
            for level, feature in zip(self.levels, features, strict=True)
        ]
        return self.fuse(per_level)  # [R, C, S, S]


class StaticRoIPool(nn.Module):
    """A ``(features, rois)`` pooler behind torchvision's ``MultiScaleRoIAlign`` call signature.

    ``RoIHeads`` calls ``box_roi_pool(features_dict, proposals_per_image, image_shapes)``; this turns the
    proposals into one ``[R, 5]`` RoI tensor and calls ``pooler`` on the levels it names. ``output_size``
    and ``sampling_ratio`` mirror ``MultiScaleRoIAlign``'s attributes.
    """

    def __init__(self, pooler: SoftRoISelection) -> None:
        super().__init__()
        self.pooler = pooler
        self.featmap_names = list(pooler.levels)
        self.output_size = (pooler.output_size, pooler.output_size)
        self.sampling_ratio = pooler.sampling_ratio

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:  # boxes: per image [R_i, 4] -> [sum R_i, C, S, S]
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0
        )  # [R, 5]
        return self.pooler([x[name] for name in self.featmap_names], rois)

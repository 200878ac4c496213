"""The ``model.transform`` every detector here uses: our preprocessing runs before the model.

torchvision's detectors resize and normalise inside ``model.transform``; edgefpn letterboxes and
normalises in numpy (``edgefpn.data.preprocess``), one preprocessing for training, the exported graph
and the device runtime. FCOS, RetinaNet and Faster R-CNN therefore all swap in this transform, which
only batches (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = ["IdentityTransform"]


class IdentityTransform(GeneralizedRCNNTransform):
    """A ``GeneralizedRCNNTransform`` that only batches: no resizing, no normalisation, no padding.

    Images must already be letterboxed and normalised (``edgefpn.data.preprocess``) and all share one
    size, so boxes in targets and detections stay in input (letterboxed) pixels.
    """

    def __init__(self) -> None:
        # The parent's sizes and statistics are never used; these values only satisfy its constructor.
        super().__init__(min_size=0, max_size=0, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])

    def forward(
        self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        """Stack ``N`` images ``[3, H, W]`` (or take a ``[N, 3, H, W]`` batch) into an ``ImageList``."""
        if isinstance(images, Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"expected images of shape [N, 3, H, W], got {list(images.shape)}")
            batch = images
        else:
            if len(images) == 0:
                raise ValueError("expected at least one image, got an empty list")
            shapes = [list(img.shape) for img in images]
            if any(len(s) != 3 or s[0] != 3 for s in shapes) or any(s != shapes[0] for s in shapes):
                raise ValueError(
                    f"expected images of one shape [3, H, W] (already letterboxed), got {shapes}"
                )
            batch = torch.stack(images)  # [N, 3, H, W]
        if targets is not None:
            if len(targets) != batch.shape[0]:
                raise ValueError(f"expected one target per image ({batch.shape[0]}), got {len(targets)}")
            targets = [dict(t) for t in targets]  # shallow copies, as the parent makes
        height, width = int(batch.shape[-2]), int(batch.shape[-1])
        return ImageList(batch, [(height, width)] * batch.shape[0]), targets

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Detections are already in input pixels: nothing was resized, so nothing is mapped back."""
        return result

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"

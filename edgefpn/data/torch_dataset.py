"""torch ``Dataset`` + ``collate`` for training, built on :mod:`edgefpn.data.preprocess`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from edgefpn.config import AugmentConfig
from edgefpn.data.augment import MIN_BOX_SIDE, augment, clip_boxes, is_active
from edgefpn.data.coco import CocoSplit
from edgefpn.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, boxes_to_input, load_image, preprocess
from edgefpn.errors import DataError

__all__ = ["MIN_BOX_SIDE", "DetectionDataset", "collate"]


class DetectionDataset(torch.utils.data.Dataset):
    """Images of a :class:`CocoSplit`, letterboxed and normalised exactly like every backend sees them.

    Items are ``(image [3, H, W] float32, {"boxes": float32 [K, 4] xyxy input pixels,
    "labels": int64 [K]})``. With ``hflip`` the original image is flipped with probability 0.5
    (drawn from torch's global generator, which the trainer seeds). With ``augment`` (an
    ``AugmentConfig`` with any part on) item ``index`` of epoch ``e`` (:meth:`set_epoch`) is augmented
    with ``np.random.default_rng((seed, e, index))``: the same draws whatever the worker or order.
    """

    def __init__(
        self,
        split: CocoSplit,
        size: tuple[int, int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hflip: bool = False,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"size must be (H, W) with positive integers, got {size!r}")
        self.split = split
        self.size = (int(size[0]), int(size[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.hflip = bool(hflip)
        self.augment = augment if is_active(augment) else None
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation draws the next items get (part of each item's rng seed)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        rec = self.split.images[index]
        image = load_image(rec.path)  # [h, w, 3] uint8
        h, w = image.shape[:2]
        if (w, h) != (rec.width, rec.height):
            raise DataError(
                f"{rec.path}: image is {w}x{h} but the annotations say {rec.width}x{rec.height}"
            )
        boxes, labels = rec.boxes, rec.labels  # [K, 4] xyxy original pixels, [K]
        if self.hflip and torch.rand(()).item() < 0.5:
            # Flip the original, not the letterboxed input: the padding must stay bottom/right.
            image = np.ascontiguousarray(image[:, ::-1])
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, boxes, labels = augment(image, boxes, labels, rng=rng, cfg=self.augment, mean=self.mean)
        x, lb = preprocess(image, size=self.size, mean=self.mean, std=self.std)
        boxes = boxes_to_input(np.asarray(boxes).reshape(-1, 4), lb)
        in_h, in_w = self.size
        boxes, labels = clip_boxes(boxes, labels, width=in_w, height=in_h, min_side=MIN_BOX_SIDE)
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        }
        return torch.from_numpy(x), target


def collate(batch: Sequence[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Stack images into ``[N, 3, H, W]``; keep targets as a list (their ``K`` differ)."""
    images = torch.stack([item[0] for item in batch])
    return images, [item[1] for item in batch]

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
    "labels": int64 [K]})``. With ``hflip`` the original image is flipped with probability 0.5.

    Randomness: every random choice for item ``index`` in epoch ``epoch`` draws from
    :meth:`item_rng`, ``np.random.default_rng((seed, epoch, index))``, and from nothing else. An item
    is therefore the same whichever process, DataLoader worker or rank makes it, so a run does not
    depend on the worker count or the world size. The epoch comes from :meth:`set_epoch`, or with the
    index as ``dataset[(epoch, index)]``: the trainer's sampler passes it that way because persistent
    DataLoader workers hold their own copy of the dataset, which ``set_epoch`` in the main process
    does not reach. With ``augment`` (an ``AugmentConfig`` with any part on) the item is augmented
    with the same generator.
    """

    def __init__(
        self,
        split: CocoSplit,
        size: tuple[int, int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hflip: bool = False,
        augment: AugmentConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"size must be (H, W) with positive integers, got {size!r}")
        self.split = split
        self.size = (int(size[0]), int(size[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.hflip = bool(hflip)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.seed = seed
        self.epoch = 0
        self.augment = augment if is_active(augment) else None

    def set_epoch(self, epoch: int) -> None:
        """The epoch that plain integer indexing draws its randomness for."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def item_rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The generator every random choice of item ``index`` in ``epoch`` (default: the set epoch) uses."""
        return np.random.default_rng((self.seed, self.epoch if epoch is None else epoch, index))

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Tensor, dict[str, Tensor]]:
        epoch, index = (
            (int(index[0]), int(index[1])) if isinstance(index, tuple) else (self.epoch, int(index))
        )
        index = index + len(self) if index < 0 else index  # the rng seed needs the non-negative one
        rng = self.item_rng(index, epoch)
        rec = self.split.images[index]
        image = load_image(rec.path)  # [h, w, 3] uint8
        h, w = image.shape[:2]
        if (w, h) != (rec.width, rec.height):
            raise DataError(f"{rec.path}: image is {w}x{h} but the annotations say {rec.width}x{rec.height}")
        boxes, labels = rec.boxes, rec.labels  # [K, 4] xyxy original pixels, [K]
        if self.hflip and rng.random() < 0.5:
            # Flip the original, not the letterboxed input: the padding must stay bottom/right.
            image = np.ascontiguousarray(image[:, ::-1])
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        if self.augment is not None:  # the same generator, after the flip's draw
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

"""Shared decode pieces (numpy only): parameters, detections, clipping, per-level top-k, level merging.

A decoder (``fcos.py``, ``retinanet.py``, ...) only scores locations and decodes the boxes it keeps;
thresholding + top-k per level (``_select_topk``) and merging the levels + class-aware NMS
(``_merge_levels``) live here so every architecture shares them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefpn.postprocess.nms import _float32_below, _greedy_nms

__all__ = ["LEVELS", "STRIDES", "Detections", "PostprocessParams", "split_output_name"]

LEVELS = ("p3", "p4", "p5", "p6", "p7")
STRIDES = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class PostprocessParams:
    """Decode and NMS settings, with torchvision's FCOS defaults.

    Args:
        score_thresh: keep candidates whose score is strictly greater than this, in ``[0, 1)``.
        nms_thresh: suppress a box whose IoU with a kept box of the same class is greater than this.
        topk_candidates: at most this many candidates per level, before NMS.
        detections_per_img: at most this many detections per image, after NMS.
        strides: per level, the anchor side in input pixels (torchvision's FCOS anchor sizes).
        levels: names of the levels, the suffix of the ``cls_`` / ``box_`` / ``ctr_`` outputs.
    """

    score_thresh: float = 0.2
    nms_thresh: float = 0.6
    topk_candidates: int = 1000
    detections_per_img: int = 100
    strides: tuple[int, ...] = STRIDES
    levels: tuple[str, ...] = LEVELS

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_thresh < 1.0:
            raise ValueError(f"score_thresh must be in [0, 1), got {self.score_thresh}")
        if not 0.0 < self.nms_thresh <= 1.0:
            raise ValueError(f"nms_thresh must be in (0, 1], got {self.nms_thresh}")
        if self.topk_candidates <= 0:
            raise ValueError(f"topk_candidates must be positive, got {self.topk_candidates}")
        if self.detections_per_img <= 0:
            raise ValueError(f"detections_per_img must be positive, got {self.detections_per_img}")
        if len(self.strides) != len(self.levels) or not self.levels:
            raise ValueError(
                f"strides and levels must be non-empty and of equal length, got {self.strides} and "
                f"{self.levels}"
            )
        if any(s <= 0 for s in self.strides):
            raise ValueError(f"strides must be positive, got {self.strides}")


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections of one image, sorted by decreasing score."""

    boxes: np.ndarray  # [K, 4] float32 xyxy
    scores: np.ndarray  # [K] float32
    labels: np.ndarray  # [K] int64, contiguous 0..C-1

    def __post_init__(self) -> None:
        k = self.scores.shape[0] if self.scores.ndim == 1 else -1
        if self.boxes.shape != (k, 4) or self.labels.shape != (k,):
            raise ValueError(
                "expected boxes [K, 4], scores [K] and labels [K], got "
                f"{self.boxes.shape}, {self.scores.shape} and {self.labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))


def _clip_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Clip xyxy boxes [K, 4] to ``image_size=(H, W)``, in place, like ``clip_boxes_to_image``."""
    h, w = image_size
    np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
    return boxes


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic: never overflows ``exp``."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _topk_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions (ascending) of the ``k`` highest of ``scores`` [M] (M > k); ties at the cut: lower first."""
    kth = np.partition(scores, scores.size - k)[scores.size - k]
    above = np.flatnonzero(scores > kth)
    at = np.flatnonzero(scores == kth)[: k - above.size]
    return np.sort(np.concatenate([above, at]))


def _select_topk(
    scores: np.ndarray, flat_idx: np.ndarray, score_thresh: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Threshold + top-k of one level's candidates, as torchvision does per level.

    ``scores`` [M] are exact scores of a superset of the candidates, ``flat_idx`` [M] their ascending
    indices (``np.nonzero`` order) in the level's flattened ``[HW * A, C]`` (location-major,
    class-minor) order. Returns the kept ``(scores, flat_idx)``, at most ``k``, by decreasing score
    (ties: lower index first, at the top-k cut too).
    """
    keep = scores > _float32_below(score_thresh)
    scores, flat_idx = scores[keep], flat_idx[keep]
    if scores.size > k:
        part = _topk_positions(scores, k)
        scores, flat_idx = scores[part], flat_idx[part]
    order = np.lexsort((flat_idx, -scores))
    return scores[order], flat_idx[order]


def _merge_levels(
    boxes: list[np.ndarray], scores: list[np.ndarray], labels: list[np.ndarray], params: PostprocessParams
) -> Detections:
    """Concatenate the levels' candidates, run class-aware NMS, keep ``detections_per_img``."""
    if not boxes or sum(len(s) for s in scores) == 0:
        return Detections.empty()
    all_boxes = np.concatenate(boxes).astype(np.float32, copy=False)  # [K, 4]
    all_scores = np.concatenate(scores).astype(np.float32, copy=False)  # [K]
    all_labels = np.concatenate(labels).astype(np.int64, copy=False)  # [K]
    keep = _greedy_nms(all_boxes, all_scores, all_labels, params.nms_thresh, params.detections_per_img)
    return Detections(all_boxes[keep], all_scores[keep], all_labels[keep])


def split_output_name(name: str) -> tuple[str, str | None]:
    """``"cls_p3"`` -> ``("cls", "p3")``, ``"rpn_box_p2"`` -> ``("rpn_box", "p2")``, ``"proposals"`` ->
    ``("proposals", None)``: the branch and pyramid level of an exported output.

    Every architecture names per-level outputs ``<branch>_p<k>``; outputs that are not per level (a
    two-stage detector's proposals and RoI head) have no level.
    """
    branch, sep, level = name.rpartition("_")
    if sep and branch and len(level) > 1 and level[0] == "p" and level[1:].isdigit():
        return branch, level
    return name, None

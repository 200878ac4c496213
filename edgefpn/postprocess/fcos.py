"""FCOS decode: reproduces torchvision's ``FCOS.postprocess_detections`` on the exported per-level tensors.

Its anchor layout (see docs/ARCHITECTURE.md):

* anchor centres of level ``l`` sit at ``(x * (W // W_l), y * (H // H_l))``, the *top-left* corner of
  each cell (no half-cell offset), with the spacing taken from the grid, not the nominal stride. For a
  320x320 input P7 is a 3x3 grid, so its centres are 106 px apart although its stride is 128;
* each anchor is a square of side ``strides[l]`` (torchvision's anchor sizes equal the strides), and
  ``BoxLinearCoder(normalize_by_size=True)`` scales the ltrb regression by that side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from edgefpn.postprocess.common import Detections, PostprocessParams, _clip_boxes, _sigmoid, _topk_positions
from edgefpn.postprocess.nms import _float32_below, _greedy_nms

__all__ = ["fcos_decode"]


# Candidates are pre-selected on the raw logits before the exact score is computed (a cheap compare
# over [C, A] instead of two sigmoids, a product and a sqrt). The margin, in logit units, keeps the
# pre-selection a strict superset of ``score > score_thresh`` despite float32 rounding in the sigmoid.
_LOGIT_MARGIN = 0.01
# x1 = cx - l * w, y1 = cy - t * h, x2 = cx + r * w, y2 = cy + b * h (negation is exact in IEEE).
_LTRB_SIGN = np.array([-1, -1, 1, 1], dtype=np.float32)


def _logit_floor(score_thresh: float) -> float:
    """A logit at or below this keeps ``sqrt(sigmoid(a) * sigmoid(b))`` from passing ``score_thresh``.

    Pre-selecting on it is exact: it only skips candidates the exact threshold would drop.
    """
    p = score_thresh * score_thresh  # score > t needs sigmoid(a) > t**2 and sigmoid(b) > t**2
    if p <= 0.0:
        return -math.inf
    return math.log(p / (1.0 - p)) - _LOGIT_MARGIN


def _as_f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.astype(np.float32)


@lru_cache(maxsize=32)
def _fcos_layout(
    image_size: tuple[int, int], grids: tuple[tuple[int, int], ...], strides: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All levels' anchors end to end: read-only ``(ctr [A, 4], size [A, 4], starts [L + 1])``, where
    level ``l`` holds locations ``starts[l]:starts[l + 1]`` of the ``A`` = sum of ``H_l * W_l``."""
    parts = [_fcos_anchors(image_size, grid, stride) for grid, stride in zip(grids, strides, strict=True)]
    ctr = np.concatenate([c for c, _ in parts])
    size = np.concatenate([z for _, z in parts])
    starts = np.cumsum([0, *(h * w for h, w in grids)])
    for a in (ctr, size, starts):
        a.flags.writeable = False
    return ctr, size, starts


@lru_cache(maxsize=64)
def _fcos_anchors(
    image_size: tuple[int, int], grid: tuple[int, int], anchor_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres and sides of one level, exactly as torchvision's ``AnchorGenerator`` makes them.

    Returns read-only ``(ctr, size)``, each [H_l * W_l, 4] float32 as ``(cx, cy, cx, cy)`` and
    ``(w, h, w, h)``, in torchvision's location order (row-major over the grid).
    """
    (img_h, img_w), (grid_h, grid_w) = image_size, grid
    half = np.round(np.float32(anchor_size) / 2).astype(np.float32)  # base anchor [-half, half], rounded
    shift_x = (np.arange(grid_w, dtype=np.int64) * (img_w // grid_w)).astype(np.float32)  # [W_l]
    shift_y = (np.arange(grid_h, dtype=np.int64) * (img_h // grid_h)).astype(np.float32)  # [H_l]
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")  # [H_l, W_l]
    x1, x2 = (sx - half).ravel(), (sx + half).ravel()  # [HW]
    y1, y2 = (sy - half).ravel(), (sy + half).ravel()
    cx, cy = np.float32(0.5) * (x1 + x2), np.float32(0.5) * (y1 + y2)  # as BoxLinearCoder.decode
    w, h = x2 - x1, y2 - y1
    ctr = np.stack([cx, cy, cx, cy], axis=1)  # [HW, 4]
    size = np.stack([w, h, w, h], axis=1)  # [HW, 4]
    ctr.flags.writeable = False
    size.flags.writeable = False
    return ctr, size


def _fcos_level_shapes(outputs: Mapping[str, np.ndarray], params: PostprocessParams) -> tuple[int, int]:
    """Validate the per-level tensors; returns ``(N, C)``."""
    missing = [
        f"{kind}_{lvl}"
        for lvl in params.levels
        for kind in ("cls", "box", "ctr")
        if f"{kind}_{lvl}" not in outputs
    ]
    if missing:
        raise ValueError(f"outputs lack {missing}, got keys {sorted(outputs)}")
    n, c = outputs[f"cls_{params.levels[0]}"].shape[:2]
    for lvl in params.levels:
        cls, box, ctr = (outputs[f"{kind}_{lvl}"] for kind in ("cls", "box", "ctr"))
        if cls.ndim != 4 or cls.shape[:2] != (n, c):
            raise ValueError(f"cls_{lvl}: expected [{n}, {c}, H, W], got {list(cls.shape)}")
        hw = tuple(cls.shape[2:])
        if box.shape != (n, 4, *hw) or ctr.shape != (n, 1, *hw):
            raise ValueError(
                f"{lvl}: expected box [{n}, 4, {hw[0]}, {hw[1]}] and ctr [{n}, 1, {hw[0]}, {hw[1]}], "
                f"got {list(box.shape)} and {list(ctr.shape)}"
            )
        if 0 in hw:
            raise ValueError(f"cls_{lvl}: empty feature map {list(cls.shape)}")
    return int(n), int(c)


def fcos_decode(
    outputs: Mapping[str, np.ndarray], params: PostprocessParams, *, image_size: tuple[int, int]
) -> list[Detections]:
    """Decode FCOS head outputs into detections, one ``Detections`` per batch item.

    Args:
        outputs: ``cls_<level>`` [N, C, H_l, W_l] logits, ``box_<level>`` [N, 4, H_l, W_l] ReLU'd ltrb
            distances divided by the anchor side, ``ctr_<level>`` [N, 1, H_l, W_l] centerness logits.
        params: thresholds and level layout.
        image_size: ``(H, W)`` of the network input; boxes are xyxy in these pixels, clipped to it.

    Returns:
        Per image, detections by decreasing score; ``score = sqrt(sigmoid(cls) * sigmoid(ctr))``.
    """
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (H, W) with positive sides, got {image_size}")
    image_size = (int(image_size[0]), int(image_size[1]))
    n, c = _fcos_level_shapes(outputs, params)
    levels = params.levels
    grids = tuple(
        (int(outputs[f"cls_{lvl}"].shape[2]), int(outputs[f"cls_{lvl}"].shape[3])) for lvl in levels
    )
    anchor_ctr, anchor_size, starts = _fcos_layout(image_size, grids, tuple(int(s) for s in params.strides))
    # Every level at once, locations end to end (level-major, as torchvision concatenates them). The
    # end-to-end path runs this right after the engine has evicted the caches, where each numpy call
    # costs more than its arithmetic: few calls, not few elements, is what keeps it fast.
    cls = np.concatenate(
        [_as_f32(outputs[f"cls_{lvl}"]).reshape(n, c, -1) for lvl in levels], axis=2
    )  # [N, C, A]
    ctr = np.concatenate([_as_f32(outputs[f"ctr_{lvl}"]).reshape(n, -1) for lvl in levels], axis=1)  # [N, A]
    box = np.concatenate(
        [_as_f32(outputs[f"box_{lvl}"]).reshape(n, 4, -1) for lvl in levels], axis=2
    )  # [N, 4, A]
    floor = np.float32(_logit_floor(params.score_thresh))  # -inf for a 0 threshold: all finite logits
    thresh = _float32_below(params.score_thresh)
    k = params.topk_candidates

    results = []
    for i in range(n):
        cand = cls[i] > floor  # [C, A]
        cand &= ctr[i] > floor
        loc, label = np.nonzero(cand.T)  # [M] each, in each level's flattened [HW, C] order
        scores = np.sqrt(
            _sigmoid(cls[i, label, loc]) * _sigmoid(ctr[i, loc])
        )  # [M], torchvision's FCOS score
        passed = scores > thresh
        loc, label, scores = loc[passed], label[passed], scores[passed]
        if loc.size > k:  # a level is one slice of ``loc``: top-k only where a level has more than k
            bounds = np.searchsorted(loc, starts)  # [L + 1]
            if np.any(np.diff(bounds) > k):
                picked = np.concatenate(
                    [
                        a + _topk_positions(scores[a:b], k) if b - a > k else np.arange(a, b)
                        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
                    ]
                )
                loc, label, scores = loc[picked], label[picked], scores[picked]
        if not loc.size:
            results.append(Detections.empty())
            continue
        codes = box[i][:, loc].T  # [K, 4] ltrb
        boxes = _clip_boxes(anchor_ctr[loc] + _LTRB_SIGN * (codes * anchor_size[loc]), image_size)  # [K, 4]
        # Score ties keep this (level, location, class) order through NMS's stable sort, the order
        # torchvision's per-level sort-then-concatenate gives them.
        keep = _greedy_nms(boxes, scores, label, params.nms_thresh, params.detections_per_img)
        results.append(Detections(boxes[keep], scores[keep], label[keep]))
    return results

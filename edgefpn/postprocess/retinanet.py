"""RetinaNet decode: reproduces torchvision's ``RetinaNet.postprocess_detections`` on the per-level outputs.

Outputs per level ``l``: ``cls_<l>`` ``[N, A*C, H_l, W_l]`` logits and ``box_<l>`` ``[N, A*4, H_l, W_l]``
box deltas, channel ``a*C + c`` / ``a*4 + k`` for anchor ``a`` (torchvision's head views them as
``[N, A, C, H, W]`` and flattens to ``[N, H*W*A, C]``: location-major, anchor, then class).

Anchors are torchvision's ``_default_anchorgen``: per level sizes ``(s, int(s*2^(1/3)), int(s*2^(2/3)))``
with ``s = 4 * stride`` (32..512 for p3..p7) and aspect ratios ``(0.5, 1, 2)``, ratio-major; each base
anchor ``round([-w, -h, w, h] / 2)`` with ``w = size / sqrt(r)``, ``h = size * sqrt(r)`` (float32), shifted
to the *top-left* corner of every cell with the spacing ``input // grid`` (see ``fcos.py``). Boxes are
``BoxCoder(weights=(1, 1, 1, 1))``: centre + ``d * size``, ``exp`` of the clamped log-size deltas.
Scores are ``sigmoid(cls)``; threshold, top-k per level, clip, then class-aware NMS and the cap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from edgefpn.postprocess.common import (
    Detections,
    PostprocessParams,
    _clip_boxes,
    _merge_levels,
    _select_topk,
    _sigmoid,
)

__all__ = ["ANCHOR_RATIOS", "ANCHOR_SCALES", "anchor_sizes", "retinanet_decode"]

# torchvision's _default_anchorgen: three octave scales and three aspect ratios per location.
ANCHOR_SCALES = (1.0, 2 ** (1.0 / 3), 2 ** (2.0 / 3))
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
NUM_ANCHORS = len(ANCHOR_SCALES) * len(ANCHOR_RATIOS)
# torchvision's BoxCoder clamps log-size deltas at log(1000 / 16) before exp.
_BBOX_XFORM_CLIP = math.log(1000.0 / 16)
# as in fcos.py: the logit pre-selection margin that keeps it a superset of score > thresh
_LOGIT_MARGIN = 0.01


def anchor_sizes(stride: int) -> tuple[int, ...]:
    """``(32, 40, 50)`` for stride 8: torchvision's anchor sizes of the level (``int`` truncates)."""
    base = 4 * stride
    return tuple(int(base * s) for s in ANCHOR_SCALES)


@lru_cache(maxsize=16)
def _base_anchors(stride: int) -> np.ndarray:
    """[A, 4] float32 ``(x1, y1, x2, y2)`` around the origin, as ``AnchorGenerator.generate_anchors``."""
    scales = np.asarray(anchor_sizes(stride), dtype=np.float32)
    ratios = np.asarray(ANCHOR_RATIOS, dtype=np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # [A], ratio-major
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
    base = np.round(base).astype(np.float32)
    base.flags.writeable = False
    return base


@lru_cache(maxsize=64)
def _anchor_geometry(
    image_size: tuple[int, int], grid: tuple[int, int], stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centres and sizes of one level's anchors, ``(ctr, size)`` each [H_l*W_l*A, 2] float32 ``(x, y)`` /
    ``(w, h)``, computed from the anchor corners exactly as ``BoxCoder.decode_single`` does."""
    (img_h, img_w), (grid_h, grid_w) = image_size, grid
    shift_x = (np.arange(grid_w, dtype=np.int64) * (img_w // grid_w)).astype(np.float32)  # [W_l]
    shift_y = (np.arange(grid_h, dtype=np.int64) * (img_h // grid_h)).astype(np.float32)  # [H_l]
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)  # [HW, 4]
    anchors = (shifts[:, None, :] + _base_anchors(stride)[None, :, :]).reshape(-1, 4)  # [HW*A, 4]
    size = anchors[:, 2:] - anchors[:, :2]  # [HWA, 2] (w, h)
    ctr = anchors[:, :2] + np.float32(0.5) * size  # [HWA, 2]
    ctr.flags.writeable = False
    size.flags.writeable = False
    return ctr, size


def _level_shapes(outputs: Mapping[str, np.ndarray], params: PostprocessParams) -> tuple[int, int]:
    """Validate the per-level tensors; returns ``(N, C)``."""
    missing = [f"{k}_{lvl}" for lvl in params.levels for k in ("cls", "box") if f"{k}_{lvl}" not in outputs]
    if missing:
        raise ValueError(f"outputs lack {missing}, got keys {sorted(outputs)}")
    first = outputs[f"cls_{params.levels[0]}"]
    if first.ndim != 4 or first.shape[1] % NUM_ANCHORS:
        raise ValueError(
            f"cls_{params.levels[0]}: expected [N, {NUM_ANCHORS}*C, H, W], got {list(first.shape)}"
        )
    n, c = int(first.shape[0]), int(first.shape[1]) // NUM_ANCHORS
    for lvl in params.levels:
        cls, box = outputs[f"cls_{lvl}"], outputs[f"box_{lvl}"]
        if cls.ndim != 4 or cls.shape[:2] != (n, NUM_ANCHORS * c) or 0 in cls.shape[2:]:
            raise ValueError(f"cls_{lvl}: expected [{n}, {NUM_ANCHORS * c}, H, W], got {list(cls.shape)}")
        if box.shape != (n, NUM_ANCHORS * 4, *cls.shape[2:]):
            raise ValueError(
                f"box_{lvl}: expected [{n}, {NUM_ANCHORS * 4}, {cls.shape[2]}, {cls.shape[3]}], got "
                f"{list(box.shape)}"
            )
    return n, c


def _decode_boxes(deltas: np.ndarray, ctr: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``BoxCoder(weights=(1, 1, 1, 1)).decode_single``: deltas [k, 4] (dx, dy, dw, dh) -> xyxy [k, 4]."""
    dw_dh = np.minimum(deltas[:, 2:], np.float32(_BBOX_XFORM_CLIP))  # [k, 2]
    pred_ctr = deltas[:, :2] * size + ctr  # [k, 2]
    half = np.float32(0.5) * (np.exp(dw_dh) * size)  # [k, 2]
    return np.concatenate([pred_ctr - half, pred_ctr + half], axis=1)  # [k, 4]


def retinanet_decode(
    outputs: Mapping[str, np.ndarray], params: PostprocessParams, *, image_size: tuple[int, int]
) -> list[Detections]:
    """Decode RetinaNet head outputs into detections, one ``Detections`` per batch item.

    Args:
        outputs: ``cls_<level>`` [N, A*C, H_l, W_l] logits and ``box_<level>`` [N, A*4, H_l, W_l] deltas.
        params: thresholds and the level layout (``strides`` give the anchor sizes, ``4 * stride``).
        image_size: ``(H, W)`` of the network input; boxes are xyxy in these pixels, clipped to it.
    """
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (H, W) with positive sides, got {image_size}")
    image_size = (int(image_size[0]), int(image_size[1]))
    n, c = _level_shapes(outputs, params)
    t = params.score_thresh
    floor = np.float32(math.log(t / (1.0 - t)) - _LOGIT_MARGIN) if t > 0 else np.float32(-np.inf)

    levels = []  # per level: (cls [N, HWA, C], box [N, HWA, 4], anchor ctr, anchor size)
    for lvl, stride in zip(params.levels, params.strides, strict=True):
        cls = np.asarray(outputs[f"cls_{lvl}"], dtype=np.float32)
        h, w = int(cls.shape[2]), int(cls.shape[3])
        # [N, A*C, H, W] -> [N, A, C, HW] -> [N, HW, A, C] -> [N, HWA, C], torchvision's order
        cls = cls.reshape(n, NUM_ANCHORS, c, h * w).transpose(0, 3, 1, 2).reshape(n, -1, c)
        box = np.asarray(outputs[f"box_{lvl}"], dtype=np.float32)
        box = box.reshape(n, NUM_ANCHORS, 4, h * w).transpose(0, 3, 1, 2).reshape(n, -1, 4)
        levels.append((cls, box, *_anchor_geometry(image_size, (h, w), int(stride))))

    results = []
    for i in range(n):
        boxes, scores, labels = [], [], []
        for cls, box, anchor_ctr, anchor_size in levels:
            cand_a, cand_c = np.nonzero(cls[i] > floor)  # [M] each
            if not cand_a.size:
                continue
            cand_scores = _sigmoid(cls[i][cand_a, cand_c])  # [M]
            top_scores, flat = _select_topk(cand_scores, cand_a * c + cand_c, t, params.topk_candidates)
            anchor, label = flat // c, flat % c
            decoded = _decode_boxes(box[i][anchor], anchor_ctr[anchor], anchor_size[anchor])  # [k, 4]
            boxes.append(_clip_boxes(decoded, image_size))
            scores.append(top_scores)
            labels.append(label)
        results.append(_merge_levels(boxes, scores, labels, params))
    return results

"""The one numpy decode + class-aware NMS that every backend uses (no torch: the device runtime imports it).

``fcos_decode`` reproduces torchvision's ``FCOS.postprocess_detections`` on the exported per-level
tensors (see docs/ARCHITECTURE.md), including its anchor layout:

* anchor centres of level ``l`` sit at ``(x * (W // W_l), y * (H // H_l))``, the *top-left* corner of
  each cell (no half-cell offset), with the spacing taken from the grid, not the nominal stride. For a
  320x320 input P7 is a 3x3 grid, so its centres are 106 px apart although its stride is 128;
* each anchor is a square of side ``strides[l]`` (torchvision's anchor sizes equal the strides), and
  ``BoxLinearCoder(normalize_by_size=True)`` scales the ltrb regression by that side.

A decoder only scores locations and decodes the boxes it keeps; thresholding + top-k per level
(``_select_topk``) and merging the levels + NMS (``_merge_levels``) are shared, so a RetinaNet decoder
can sit beside ``fcos_decode`` later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "LEVELS",
    "STRIDES",
    "Detections",
    "PostprocessParams",
    "batched_nms",
    "box_iou",
    "fcos_decode",
    "nms",
]

LEVELS = ("p3", "p4", "p5", "p6", "p7")
STRIDES = (8, 16, 32, 64, 128)

# Candidates are pre-selected on the raw logits before the exact score is computed (a cheap compare
# over [C, HW] instead of two sigmoids, a product and a sqrt). The margin, in logit units, keeps the
# pre-selection a strict superset of ``score > score_thresh`` despite float32 rounding in the sigmoid.
_LOGIT_MARGIN = 0.01
# x1 = cx - l * w, y1 = cy - t * h, x2 = cx + r * w, y2 = cy + b * h (negation is exact in IEEE).
_LTRB_SIGN = np.array([-1, -1, 1, 1], dtype=np.float32)
# NMS resolves this many score-sorted boxes per vectorised step (a [B, B] overlap matrix).
_NMS_BLOCK = 128
# NMS applies newly kept boxes to every later box at once only when that is at most this many box pairs;
# otherwise later boxes are checked a block at a time, when reached. Keeps each step's temporaries
# small (~100 KB) whatever the number of candidates.
_NMS_PAIR_BUDGET = 24_576


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
                f"strides and levels must be non-empty and of equal length, got {self.strides} and {self.levels}"
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


# ---------------------------------------------------------------------------------------------------
# Boxes and NMS


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``a`` [A, 4] and ``b`` [B, 4] -> [A, B] (0 where both are empty)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != 4 or b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"expected boxes of shape [A, 4] and [B, 4], got {a.shape} and {b.shape}")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])  # [A]
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # [B]
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [A, B, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # [A, B, 2]
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]  # [A, B]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(union > 0, iou, 0).astype(np.float32, copy=False)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS with ``torchvision.ops.nms`` semantics.

    Returns the int64 indices of the kept boxes, by decreasing score; a box is suppressed when its IoU
    with a kept, higher-scoring box is greater than ``iou_thresh``.
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    return _greedy_nms(boxes, scores, None, iou_thresh, max_keep=len(scores))


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Class-aware NMS with ``torchvision.ops.batched_nms`` semantics: boxes of different labels never
    suppress each other. Returns kept int64 indices by decreasing score."""
    boxes, scores = _check_boxes_scores(boxes, scores)
    labels = np.asarray(labels)
    if labels.shape != scores.shape:
        raise ValueError(f"expected labels of shape {scores.shape}, got {labels.shape}")
    return _greedy_nms(boxes, scores, labels, iou_thresh, max_keep=len(scores))


def _check_boxes_scores(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
        raise ValueError(f"expected boxes [K, 4] and scores [K], got {boxes.shape} and {scores.shape}")
    return boxes, scores


def _greedy_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray | None, iou_thresh: float, max_keep: int
) -> np.ndarray:
    """Greedy (optionally class-aware) NMS that stops after ``max_keep`` kept boxes.

    Walks the score-sorted boxes a block at a time: a block is first checked against the kept boxes
    not yet applied to it, then greedy NMS inside the block is resolved with a few vectorised passes
    over its [B, B] overlap matrix. Newly kept boxes are applied to all later boxes at once when that
    is cheap (few kept boxes or few boxes left: the case of many duplicates), else lazily, block by
    block, so that stopping at ``max_keep`` never pays for the boxes it does not reach (the case of
    many distinct low-score boxes). Kept boxes come out by decreasing score, so stopping early gives
    exactly the first ``max_keep`` of the full result.
    """
    order = np.argsort(-scores, kind="stable")  # [K]
    coords = tuple(np.ascontiguousarray(boxes[order, i]) for i in range(4))  # x1, y1, x2, y2: [K] each
    areas = (coords[2] - coords[0]) * (coords[3] - coords[1])  # [K]
    labels = labels[order] if labels is not None else None
    thresh = _float32_below(iou_thresh)
    rest = np.arange(order.size)  # positions in score order, not reached and not known to be suppressed
    keep = np.zeros((0,), dtype=np.int64)  # kept positions, in score order
    applied = 0  # keep[:applied] have been applied to every box in ``rest``
    while rest.size and keep.size < max_keep:
        block, rest = rest[:_NMS_BLOCK], rest[_NMS_BLOCK:]
        if keep.size > applied:
            block = block[~_overlaps(coords, areas, labels, keep[applied:], block, thresh).any(axis=0)]
            if not block.size:
                continue
        over = np.triu(_overlaps(coords, areas, labels, block, block, thresh), 1)  # [B, B]
        keep = np.concatenate([keep, block[_resolve_greedy(over)]])
        if rest.size and keep.size < max_keep and (keep.size - applied) * rest.size <= _NMS_PAIR_BUDGET:
            rest = rest[~_overlaps(coords, areas, labels, keep[applied:], rest, thresh).any(axis=0)]
            applied = keep.size
    return order[keep[:max_keep]].astype(np.int64, copy=False)


def _float32_below(t: float) -> np.float32:
    """The largest float32 <= ``t``: for float32 ``x``, ``x > t`` (in float64) iff ``x > _float32_below(t)``.

    torchvision compares float32 scores / IoUs with double thresholds; this keeps the compare in float32.
    """
    t32 = np.float32(t)
    return np.nextafter(t32, np.float32(-np.inf)) if float(t32) > t else t32


def _overlaps(
    coords: tuple[np.ndarray, ...],
    areas: np.ndarray,
    labels: np.ndarray | None,
    rows: np.ndarray,
    cols: np.ndarray,
    thresh: np.float32,
) -> np.ndarray:
    """[R, C] bool: IoU(box[rows], box[cols]) > thresh (and same label, when labels are given).

    float32, in the order of torchvision's CPU NMS kernel, so keep decisions match it bit for bit.
    """
    x1, y1, x2, y2 = coords
    # in-place after the first op of each line: the same float32 operations, fewer [R, C] temporaries
    w = np.minimum(x2[rows][:, None], x2[cols][None, :])
    w -= np.maximum(x1[rows][:, None], x1[cols][None, :])
    h = np.minimum(y2[rows][:, None], y2[cols][None, :])
    h -= np.maximum(y1[rows][:, None], y1[cols][None, :])
    np.maximum(w, 0, out=w)
    np.maximum(h, 0, out=h)
    w *= h  # intersection [R, C]
    union = areas[rows][:, None] + areas[cols][None, :]
    union -= w
    with np.errstate(divide="ignore", invalid="ignore"):  # two empty boxes: 0 / 0 = nan, never > thresh
        np.divide(w, union, out=union)
    over = union > thresh
    if labels is not None:
        over &= labels[rows][:, None] == labels[cols][None, :]
    return over


def _resolve_greedy(over: np.ndarray) -> np.ndarray:
    """Greedy keep mask [B] from a strictly upper-triangular "i suppresses j" matrix [B, B].

    ``keep[j] = not any(keep[i] and over[i, j] for i < j)`` has one solution; iterating it from
    all-kept fixes at least one more leading entry per pass and usually settles in two or three.
    """
    keep = np.ones(over.shape[0], dtype=bool)
    while True:
        new = ~over[keep].any(axis=0)
        if np.array_equal(new, keep):
            return keep
        keep = new


def _clip_boxes(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Clip xyxy boxes [K, 4] to ``image_size=(H, W)``, in place, like ``clip_boxes_to_image``."""
    h, w = image_size
    np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
    return boxes


# ---------------------------------------------------------------------------------------------------
# Shared decoder steps


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic: never overflows ``exp``."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _select_topk(
    scores: np.ndarray, flat_idx: np.ndarray, score_thresh: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Threshold + top-k of one level's candidates, as torchvision does per level.

    ``scores`` [M] are exact scores of a superset of the candidates, ``flat_idx`` [M] their indices in
    the level's flattened ``[HW * A, C]`` (location-major, class-minor) order. Returns the kept
    ``(scores, flat_idx)``, at most ``k``, by decreasing score (ties: lower index first).
    """
    keep = scores > _float32_below(score_thresh)
    scores, flat_idx = scores[keep], flat_idx[keep]
    if scores.size > k:
        part = np.argpartition(-scores, k - 1)[:k]
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


def _logit_floor(score_thresh: float) -> float:
    """A logit at or below this keeps ``sqrt(sigmoid(a) * sigmoid(b))`` from passing ``score_thresh``.

    Pre-selecting on it is exact: it only skips candidates the exact threshold would drop.
    """
    p = score_thresh * score_thresh  # score > t needs sigmoid(a) > t**2 and sigmoid(b) > t**2
    if p <= 0.0:
        return -math.inf
    return math.log(p / (1.0 - p)) - _LOGIT_MARGIN


# ---------------------------------------------------------------------------------------------------
# FCOS


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
    floor = np.float32(_logit_floor(params.score_thresh))  # -inf for a 0 threshold: all finite logits

    levels = []  # per level: (cls [N, C, HW], box [N, 4, HW], ctr [N, HW], anchor ctr, anchor size)
    for lvl, stride in zip(params.levels, params.strides, strict=True):
        cls = np.asarray(outputs[f"cls_{lvl}"], dtype=np.float32)
        grid = (int(cls.shape[2]), int(cls.shape[3]))
        box = np.asarray(outputs[f"box_{lvl}"], dtype=np.float32).reshape(n, 4, -1)
        ctr = np.asarray(outputs[f"ctr_{lvl}"], dtype=np.float32).reshape(n, -1)
        levels.append((cls.reshape(n, c, -1), box, ctr, *_fcos_anchors(image_size, grid, int(stride))))

    results = []
    for i in range(n):
        boxes, scores, labels = [], [], []
        for cls, box, ctr, anchor_ctr, anchor_size in levels:
            cls_i, ctr_i = cls[i], ctr[i]  # [C, HW], [HW]
            cand_c, cand_loc = np.nonzero((cls_i > floor) & (ctr_i > floor)[None, :])  # [M] each
            if not cand_c.size:
                continue
            cand_scores = np.sqrt(_sigmoid(cls_i[cand_c, cand_loc]) * _sigmoid(ctr_i[cand_loc]))  # [M]
            top_scores, flat = _select_topk(
                cand_scores, cand_loc * c + cand_c, params.score_thresh, params.topk_candidates
            )
            loc, label = flat // c, flat % c
            codes = box[i][:, loc].T  # [k, 4] ltrb
            decoded = anchor_ctr[loc] + _LTRB_SIGN * (codes * anchor_size[loc])  # [k, 4] xyxy
            boxes.append(_clip_boxes(decoded, image_size))
            scores.append(top_scores)
            labels.append(label)
        results.append(_merge_levels(boxes, scores, labels, params))
    return results

"""Greedy NMS with torchvision's semantics, bit for bit, in numpy (no torch: the device runtime imports
it)."""

from __future__ import annotations

import numpy as np

__all__ = ["batched_nms", "box_iou", "nms"]

# NMS resolves this many score-sorted boxes per vectorised step (a [B, B] overlap matrix).
_NMS_BLOCK = 128
# NMS applies newly kept boxes to every later box at once only when that is at most this many box pairs;
# otherwise later boxes are checked a block at a time, when reached. Keeps each step's temporaries
# small (~100 KB) whatever the number of candidates.
_NMS_PAIR_BUDGET = 24_576


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
    keep: np.ndarray = np.ones(over.shape[0], dtype=bool)
    while True:
        new = ~over[keep].any(axis=0)
        if np.array_equal(new, keep):
            return keep
        keep = new

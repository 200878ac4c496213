"""Faster R-CNN's in-graph tail: class-specific boxes from the RoI head's deltas, then per-class NMS on
class-masked scores and the global top K (:mod:`edgefpn.e2e.graph` documents the semantics)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from edgefpn.backends.base import THRESH_INPUT
from edgefpn.e2e.builder import _BBOX_XFORM_CLIP, _EMPTY, _Builder, _clip, _nms, _outputs
from edgefpn.postprocess import PostprocessParams
from edgefpn.postprocess.faster_rcnn import RCNN_BOX_WEIGHTS

_MIN_BOX_SIZE = 1e-2  # faster_rcnn.py's remove_small_boxes


def faster_rcnn_tail(
    b: _Builder, raw: dict[str, list[int]], params: PostprocessParams, size: tuple[int, int]
) -> None:
    """Faster R-CNN's decode + class-aware NMS + top K -> the outputs."""
    n, k, c1 = raw["roi_cls"]
    c = c1 - 1
    valid = b.op("GreaterOrEqual", ["proposal_scores", b.const(0.0)])  # [N, K]; < 0 pads the static count
    scores = b.slice(b.op("Softmax", ["roi_cls"], axis=-1), 1, c1, 2)  # [N, K, C]: background dropped
    props = "proposals"
    x1, y1, x2, y2 = (b.slice(props, i, i + 1, 2) for i in range(4))  # [N, K, 1] each
    widths, heights = b.op("Sub", [x2, x1]), b.op("Sub", [y2, y1])
    half = b.const(0.5, hint="half")
    ctr_x = b.op("Add", [x1, b.op("Mul", [half, widths])])
    ctr_y = b.op("Add", [y1, b.op("Mul", [half, heights])])
    deltas = b.reshape("roi_box", [n, k, c1, 4])
    d = [b.reshape(b.slice(deltas, i, i + 1, 3), [n, k, c1]) for i in range(4)]  # [N, K, C1] each
    wx, wy, ww, wh = (b.const(np.float32(v), hint="w") for v in RCNN_BOX_WEIGHTS)
    clip = b.const(np.float32(_BBOX_XFORM_CLIP), hint="xform_clip")
    dx, dy = b.op("Div", [d[0], wx]), b.op("Div", [d[1], wy])
    dw, dh = b.op("Min", [b.op("Div", [d[2], ww]), clip]), b.op("Min", [b.op("Div", [d[3], wh]), clip])
    pcx = b.op("Add", [b.op("Mul", [dx, widths]), ctr_x])
    pcy = b.op("Add", [b.op("Mul", [dy, heights]), ctr_y])
    hw_ = b.op("Mul", [half, b.op("Mul", [b.op("Exp", [dw]), widths])])
    hh_ = b.op("Mul", [half, b.op("Mul", [b.op("Exp", [dh]), heights])])
    corners = [
        b.op("Sub", [pcx, hw_]),
        b.op("Sub", [pcy, hh_]),
        b.op("Add", [pcx, hw_]),
        b.op("Add", [pcy, hh_]),
    ]
    boxes = b.op("Concat", [b.op("Unsqueeze", [v, b.const([3], np.int64)]) for v in corners], axis=3)
    boxes = _clip(b, b.reshape(b.slice(boxes, 1, c1, 2), [n, k * c, 4]), size)  # proposal-major
    flat_scores = b.reshape(scores, [n, k * c])
    bw = b.reshape(b.op("Sub", [b.slice(boxes, 2, 3, 2), b.slice(boxes, 0, 1, 2)]), [n, k * c])
    bh = b.reshape(b.op("Sub", [b.slice(boxes, 3, 4, 2), b.slice(boxes, 1, 2, 2)]), [n, k * c])
    min_size = b.const(np.float32(_MIN_BOX_SIZE), hint="min_size")
    keep = b.op("Greater", [flat_scores, b.reshape(THRESH_INPUT, [n, 1])])  # per image
    keep = b.op("And", [keep, b.op("GreaterOrEqual", [bw, min_size])])
    keep = b.op("And", [keep, b.op("GreaterOrEqual", [bh, min_size])])
    valid_kc = b.reshape(
        b.op("Expand", [b.op("Unsqueeze", [valid, b.const([2], np.int64)]), b.const([n, k, c], np.int64)]),
        [n, k * c],
    )
    keep = b.op("And", [keep, valid_kc])
    masked = b.op("Where", [keep, flat_scores, b.const(_EMPTY)])
    labels = b.const(np.tile(np.arange(c, dtype=np.int64), (n, k)), np.int32, "labels")  # [N, K*C]
    _nms_and_top(b, n, k * c, c, boxes, masked, labels, params)


def _nms_and_top(
    b: _Builder, n: int, m: int, c: int, boxes: str, scores: str, labels: str, params: PostprocessParams
) -> None:
    """Class-aware NMS on [N, M] class-specific candidates (score ``_EMPTY`` = none; Faster R-CNN's
    per-class boxes), then the top K -> the outputs."""
    k = params.detections_per_img
    if m < k:  # pad with empty candidates so that TopK can take K
        pad = k - m
        boxes = b.op("Concat", [boxes, b.const(np.zeros((n, pad, 4)), hint="pad_boxes")], axis=1)
        scores = b.op("Concat", [scores, b.const(np.full((n, pad), _EMPTY), hint="pad_scores")], axis=1)
        labels = b.op("Concat", [labels, b.const(np.zeros((n, pad)), np.int32, "pad_labels")], axis=1)
        m = k
    # [N, C, M]: each candidate scores only in its own class, so per-class NMS is class-aware NMS
    own = b.op(
        "Equal",
        [
            b.op("Unsqueeze", [labels, b.const([1], np.int64)]),
            b.const(np.arange(c).reshape(1, c, 1), np.int32, "classes"),
        ],
    )
    per_class = b.op("Where", [own, b.op("Unsqueeze", [scores, b.const([1], np.int64)]), b.const(_EMPTY)])
    selected = _nms(b, boxes, per_class, params)  # [S, 3] (batch, class, candidate)
    bm = b.op("Gather", [selected, b.const([0, 2], np.int64, "bm")], axis=1)  # [S, 2]
    kept_scores = b.op("GatherND", [scores, bm])  # [S]
    kept = b.op("ScatterND", [b.const(np.full((n, m), _EMPTY), hint="none"), bm, kept_scores])  # [N, M]
    top, idx = b.multi_op("TopK", [kept, b.const([k], np.int64, "kfinal")], 2, axis=1, largest=1, sorted=1)
    idx = b.op("Cast", [idx], to=TensorProto.INT32)
    _outputs(b, top, b.gather_rows(boxes, idx, n, m, 4), b.gather_rows(labels, idx, n, m, None))

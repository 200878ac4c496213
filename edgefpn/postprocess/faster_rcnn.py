"""Faster R-CNN's second-stage postprocess in numpy (no torch: the device runtime imports it).

``faster_rcnn_decode`` reproduces torchvision's ``RoIHeads.postprocess_detections`` on the static graph
outputs of ``edgefpn.models.faster_rcnn_export`` (docs/ARCHITECTURE.md): only the proposals whose
``proposal_scores`` are >= 0 are real (the rest pad the static count), then softmax over ``C + 1``
classes, the box decode (``BoxCoder`` weights 10, 10, 5, 5, ``dw``/``dh`` clamped at ``log(1000 / 16)``),
clipping, background column dropped, ``score > score_thresh``, boxes of side < 1e-2 dropped, class-wise NMS,
the detection cap. Labels come out as ``0..C-1`` (torchvision's label minus one: class 0 is its background).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from edgefpn.postprocess.common import Detections, PostprocessParams, _clip_boxes
from edgefpn.postprocess.nms import _float32_below, _greedy_nms

__all__ = ["FASTER_RCNN_LEVELS", "FASTER_RCNN_STRIDES", "RCNN_BOX_WEIGHTS", "faster_rcnn_decode"]

# The RPN's levels with a ResNet-FPN (the decoder reads no per-level output; these describe the graph).
FASTER_RCNN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
FASTER_RCNN_STRIDES = (4, 8, 16, 32, 64)

RCNN_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_BBOX_XFORM_CLIP = np.float32(math.log(1000.0 / 16))
_MIN_BOX_SIZE = 1e-2  # torchvision's remove_small_boxes(min_size=1e-2) in postprocess_detections


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _decode_boxes(deltas: np.ndarray, proposals: np.ndarray) -> np.ndarray:
    """``deltas`` [K, C1, 4] relative to ``proposals`` [K, 4] -> xyxy [K, C1, 4], as ``BoxCoder.decode``."""
    widths = proposals[:, 2] - proposals[:, 0]  # [K]
    heights = proposals[:, 3] - proposals[:, 1]
    ctr_x = proposals[:, 0] + np.float32(0.5) * widths
    ctr_y = proposals[:, 1] + np.float32(0.5) * heights
    wx, wy, ww, wh = (np.float32(w) for w in RCNN_BOX_WEIGHTS)
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy  # [K, C1]
    dw = np.minimum(deltas[..., 2] / ww, _BBOX_XFORM_CLIP)
    dh = np.minimum(deltas[..., 3] / wh, _BBOX_XFORM_CLIP)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    half_w = np.float32(0.5) * (np.exp(dw) * widths[:, None])
    half_h = np.float32(0.5) * (np.exp(dh) * heights[:, None])
    return np.stack(
        [pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=-1
    )


def faster_rcnn_decode(
    outputs: Mapping[str, np.ndarray], params: PostprocessParams, *, image_size: tuple[int, int]
) -> list[Detections]:
    """Decode the static Faster R-CNN outputs into detections, one ``Detections`` per batch item.

    Args:
        outputs: ``proposals`` [N, K, 4], ``proposal_scores`` [N, K] (< 0: padding), ``roi_cls``
            [N, K, C + 1] logits (class 0: background), ``roi_box`` [N, K, 4 (C + 1)] deltas.
        params: ``score_thresh``, ``nms_thresh`` and ``detections_per_img`` are used.
        image_size: ``(H, W)`` of the network input; boxes are xyxy in these pixels, clipped to it.
    """
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (H, W) with positive sides, got {image_size}")
    missing = [k for k in ("proposals", "proposal_scores", "roi_cls", "roi_box") if k not in outputs]
    if missing:
        raise ValueError(f"outputs lack {missing}, got keys {sorted(outputs)}")
    proposals = np.asarray(outputs["proposals"], dtype=np.float32)
    valid = np.asarray(outputs["proposal_scores"], dtype=np.float32) >= 0
    cls = np.asarray(outputs["roi_cls"], dtype=np.float32)
    box = np.asarray(outputs["roi_box"], dtype=np.float32)
    n, k = valid.shape
    c1 = cls.shape[-1]
    if proposals.shape != (n, k, 4) or cls.shape != (n, k, c1) or box.shape != (n, k, 4 * c1) or c1 < 2:
        raise ValueError(
            f"expected proposals [N, K, 4], proposal_scores [N, K], roi_cls [N, K, C+1] and roi_box "
            f"[N, K, 4(C+1)], got {list(proposals.shape)}, {[n, k]}, {list(cls.shape)} and {list(box.shape)}"
        )
    size = (int(image_size[0]), int(image_size[1]))
    thresh = _float32_below(params.score_thresh)
    results = []
    for i in range(n):
        props = proposals[i][valid[i]]  # [P, 4]
        if not props.size:
            results.append(Detections.empty())
            continue
        scores = _softmax(cls[i][valid[i]])[:, 1:]  # [P, C]: background dropped
        boxes = _decode_boxes(box[i][valid[i]].reshape(-1, c1, 4), props)[:, 1:]  # [P, C, 4]
        boxes = _clip_boxes(boxes.reshape(-1, 4), size)  # [P * C, 4], proposal-major as torchvision
        scores = scores.reshape(-1)
        labels = np.tile(np.arange(c1 - 1, dtype=np.int64), props.shape[0])  # 0..C-1 per proposal
        keep = scores > thresh
        keep &= (boxes[:, 2] - boxes[:, 0] >= _MIN_BOX_SIZE) & (boxes[:, 3] - boxes[:, 1] >= _MIN_BOX_SIZE)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if not scores.size:
            results.append(Detections.empty())
            continue
        order = _greedy_nms(boxes, scores, labels, params.nms_thresh, params.detections_per_img)
        results.append(Detections(boxes[order], scores[order].astype(np.float32), labels[order]))
    return results

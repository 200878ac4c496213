"""The end-to-end engine contract as ONNX: a uint8 image head and a decode + NMS tail, standard ops only.

``detection_tail`` builds a graph whose inputs are a raw engine's outputs (``cls_p3``..., or Faster
R-CNN's ``proposals``/``roi_*``) and whose outputs are the static detections ``det_boxes`` [N, K, 4]
(input pixels), ``det_scores`` [N, K], ``det_labels`` [N, K] (int32, -1 past ``num_dets``) and
``num_dets`` [N] (int32), K = ``detections_per_img``. ``uint8_head`` builds a graph from the
letterboxed ``uint8 [N, H, W, 3]`` RGB image (``images_u8``) and the resized image's ``valid_hw``
[N, 2] (int32 rows, cols) to the float ``images`` [N, 3, H, W] the network takes. ``edgefpn.e2e.graft``
joins them to a network.

Semantics follow ``edgefpn.postprocess`` (numpy) op for op where ONNX allows:

* scores, thresholds (strict ``>`` against the largest float32 <= the threshold, as the numpy decoder
  compares), per-level top-k on the flattened ``[HW(A), C]`` candidates (ONNX ``TopK`` breaks ties by
  the lower index, as ``_topk_positions`` does), box decode in the same float32 op order, clipping;
* class-aware NMS as ``NonMaxSuppression`` per class on class-masked scores (no coordinate-offset trick:
  IoU is computed on the real coordinates, as the numpy NMS does), each class capped at K, then the
  global top K by score over the kept candidates, ties by candidate order (level, location, class),
  which is numpy's stable order.

Where they cannot be identical: ``Sigmoid``/``Exp``/``Softmax`` are the runtime's kernels (ONNX Runtime's
MLAS logistic is a polynomial within ~1 ulp), so a score at a threshold or top-k cut can fall the other
way; and the NMS op's order among *exactly* equal scores inside one class is the runtime's (numpy keeps
candidate order). Both show as rare single-box differences, which ``check`` measures per engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefpn.postprocess import PostprocessParams
from edgefpn.postprocess.faster_rcnn import RCNN_BOX_WEIGHTS
from edgefpn.postprocess.fcos import _fcos_anchors
from edgefpn.postprocess.nms import _float32_below
from edgefpn.postprocess.retinanet import NUM_ANCHORS, _anchor_geometry

__all__ = ["DET_OUTPUTS", "GRAPH_VERSION", "U8_INPUTS", "detection_tail", "uint8_head"]

# Part of every e2e artifact's config hash: bump it whenever the graph this module emits changes, so
# that e2e files made by an older edgefpn are rebuilt rather than found up to date.
GRAPH_VERSION = 2

DET_OUTPUTS = ("det_boxes", "det_scores", "det_labels", "num_dets")
U8_INPUTS = ("images_u8", "valid_hw")
_MIN_OPSET = (
    13  # Softmax over one axis, ReduceSum with axes as an input; NonMaxSuppression/TopK/ScatterND: 11
)
_EMPTY = -1.0  # score of a dropped candidate: below every real score (>= 0), above nothing the NMS keeps
_NMS_SCORE_FLOOR = -0.5  # the NMS op's score_threshold: keeps every real candidate, drops the _EMPTY ones
_BBOX_XFORM_CLIP = math.log(1000.0 / 16)
_MIN_BOX_SIZE = 1e-2  # faster_rcnn.py's remove_small_boxes
# Index arithmetic, labels and the integer I/O are INT32 (TensorRT's native integer type; the lint
# refuses INT64 engine I/O). Only what ONNX mandates stays INT64: TopK's and NonMaxSuppression's index
# outputs (cast at once) and the indices of GatherND/ScatterND, which TensorRT takes as index tensors.


class _Builder:
    """Nodes, constants and unique names of one graph under construction."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}/{hint}_{self._n}"

    def const(self, value, dtype=np.float32, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(
        self, op_type: str, inputs: Sequence[str], hint: str | None = None, *, out: str | None = None, **attrs
    ) -> str:
        """A one-output node; its output is ``out``, else a fresh name from ``hint``."""
        names = [out] if out is not None else [self.name(hint or op_type.lower())]
        return self._node(op_type, inputs, names, attrs)[0]

    def multi_op(self, op_type: str, inputs: Sequence[str], outputs: int, **attrs) -> list[str]:
        """A node with ``outputs`` outputs, freshly named (``op`` types its one output as ``str``)."""
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        return self._node(op_type, inputs, names, attrs)

    def _node(self, op_type: str, inputs: Sequence[str], names: list[str], attrs: dict) -> list[str]:
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.name(op_type), **attrs))
        return names

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", [x, self.const(shape, np.int64, "shape")])

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op(
            "Slice",
            [x, self.const([start], np.int64), self.const([end], np.int64), self.const([axis], np.int64)],
        )

    def gather_rows(self, table: str, idx: str, n: int, rows: int, width: int | None) -> str:
        """``table`` [N, rows(, width)] indexed per batch item by ``idx`` [N, k] -> [N, k(, width)].

        A flat ``Gather`` with ``n * rows`` offsets (GatherND with batch_dims is not in every parser)."""
        flat = self.reshape(table, [n * rows] + ([width] if width else []))
        offs = self.const((np.arange(n, dtype=np.int64) * rows)[:, None], np.int32, "offs")
        return self.op("Gather", [flat, self.op("Add", [idx, offs])], axis=0)


def _vi(name: str, elem: int, shape: Sequence[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def uint8_head(
    batch: int, input_size: tuple[int, int], coef: np.ndarray, *, out: str = "images", opset: int = 17
) -> onnx.ModelProto:
    """``images_u8`` uint8 [N, H, W, 3] + ``valid_hw`` int32 [N, 2] -> ``out`` float32 [N, 3, H, W].

    ``coef`` is ``edgefpn.data.preprocess``'s [2, 3] float32 (scale, offset) per channel: the same two
    float32 operations as the host's ``_normalize_into`` (x * scale, then + offset), so the result is
    the float input bit for bit. Pixels outside the top-left ``valid_hw`` window are exactly 0.0, the
    float contract's padding: no uint8 pad value normalises to 0, hence the second input.
    """
    h, w = input_size
    b = _Builder("e2e_head")
    x = b.op("Cast", ["images_u8"], to=TensorProto.FLOAT)
    x = b.op("Mul", [x, b.const(coef[0].reshape(1, 1, 1, 3), hint="scale")])
    x = b.op("Add", [x, b.const(coef[1].reshape(1, 1, 1, 3), hint="offset")])
    x = b.op("Transpose", [x], perm=[0, 3, 1, 2])  # [N, 3, H, W]
    vh = b.reshape(b.slice("valid_hw", 0, 1, 1), [batch, 1, 1, 1])
    vw = b.reshape(b.slice("valid_hw", 1, 2, 1), [batch, 1, 1, 1])
    rows = b.op("Less", [b.const(np.arange(h).reshape(1, 1, h, 1), np.int32, "rows"), vh])
    cols = b.op("Less", [b.const(np.arange(w).reshape(1, 1, 1, w), np.int32, "cols"), vw])
    b.op("Where", [b.op("And", [rows, cols]), x, b.const(0.0, hint="zero")], out=out)
    graph = helper.make_graph(
        b.nodes,
        "edgefpn_uint8_head",
        [
            _vi("images_u8", TensorProto.UINT8, [batch, h, w, 3]),
            _vi("valid_hw", TensorProto.INT32, [batch, 2]),
        ],
        [_vi(out, TensorProto.FLOAT, [batch, 3, h, w])],
        b.inits,
    )
    return _model(graph, opset)


def _model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    # the lowest IR version the opset needs (make_model's default, the newest, is more than ONNX Runtime
    # reads)
    opsets = [helper.make_opsetid("", max(opset, _MIN_OPSET))]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def detection_tail(
    arch: str,
    raw_outputs: dict[str, list[int]],
    params: PostprocessParams,
    input_size: tuple[int, int],
    *,
    opset: int = 17,
) -> onnx.ModelProto:
    """The decode + NMS graph of ``arch`` on the raw outputs ``raw_outputs`` (name -> static shape).

    Raises:
        ValueError: an arch without an in-graph decoder, or outputs that do not fit it.
    """
    b = _Builder("e2e")
    h, w = input_size
    if arch == "fcos":
        n, boxes, scores, labels, m = _fcos(b, raw_outputs, params, (h, w))
    elif arch in ("retinanet", "retinanet_v2"):
        n, boxes, scores, labels, m = _retinanet(b, raw_outputs, params, (h, w))
    elif arch == "faster_rcnn":
        n, boxes, scores, labels, m = _faster_rcnn(b, raw_outputs, params, (h, w))
    else:
        raise ValueError(
            f"no in-graph decode for arch {arch!r}; valid: fcos, retinanet, retinanet_v2, faster_rcnn"
        )
    num_classes = _num_classes(arch, raw_outputs, params)
    _nms_and_top(b, n, m, num_classes, boxes, scores, labels, params)
    k = params.detections_per_img
    inputs = [_vi(name, TensorProto.FLOAT, shape) for name, shape in raw_outputs.items()]
    outputs = [
        _vi("det_boxes", TensorProto.FLOAT, [n, k, 4]),
        _vi("det_scores", TensorProto.FLOAT, [n, k]),
        _vi("det_labels", TensorProto.INT32, [n, k]),
        _vi("num_dets", TensorProto.INT32, [n]),
    ]
    graph = helper.make_graph(b.nodes, "edgefpn_detection_tail", inputs, outputs, b.inits)
    return _model(graph, opset)


def _num_classes(arch: str, raw: dict[str, list[int]], params: PostprocessParams) -> int:
    if arch == "faster_rcnn":
        return raw["roi_cls"][2] - 1
    c = raw[f"cls_{params.levels[0]}"][1]
    return c if arch == "fcos" else c // NUM_ANCHORS


def _threshold_topk(
    b: _Builder, scores: str, n: int, count: int, params: PostprocessParams
) -> tuple[str, str, int]:
    """Per level: ``score > thresh`` then the top ``topk_candidates`` of [N, count] -> (scores, flat idx,
    k)."""
    masked = b.op(
        "Where",
        [b.op("Greater", [scores, b.const(_float32_below(params.score_thresh))]), scores, b.const(_EMPTY)],
    )
    k = min(params.topk_candidates, count)
    vals, idx = b.multi_op("TopK", [masked, b.const([k], np.int64, "k")], 2, axis=1, largest=1, sorted=1)
    return vals, b.op("Cast", [idx], to=TensorProto.INT32), k


def _clip(b: _Builder, boxes: str, input_size: tuple[int, int]) -> str:
    h, w = input_size
    lo = b.op("Max", [boxes, b.const(0.0)])
    return b.op("Min", [lo, b.const([w, h, w, h], hint="hi")])


def _fcos(b: _Builder, raw: dict[str, list[int]], params: PostprocessParams, size: tuple[int, int]):
    n, c = raw[f"cls_{params.levels[0]}"][:2]
    sign = b.const([-1, -1, 1, 1], hint="ltrb_sign")
    parts = []
    for lvl, stride in zip(params.levels, params.strides, strict=True):
        gh, gw = raw[f"cls_{lvl}"][2:]
        hw = gh * gw
        cls = b.op("Sigmoid", [b.reshape(f"cls_{lvl}", [n, c, hw])])
        ctr = b.op("Sigmoid", [b.reshape(f"ctr_{lvl}", [n, 1, hw])])
        score = b.op("Sqrt", [b.op("Mul", [cls, ctr])])  # [N, C, HW], torchvision's FCOS score
        score = b.reshape(b.op("Transpose", [score], perm=[0, 2, 1]), [n, hw * c])  # [HW, C] order
        vals, idx, k = _threshold_topk(b, score, n, hw * c, params)
        cc = b.const([c], np.int32, "C")
        loc, label = b.op("Div", [idx, cc]), b.op("Mod", [idx, cc])
        codes = b.gather_rows(
            b.op("Transpose", [b.reshape(f"box_{lvl}", [n, 4, hw])], perm=[0, 2, 1]), loc, n, hw, 4
        )  # [N, k, 4] ltrb
        actr, asize = _fcos_anchors(size, (gh, gw), int(stride))
        a_ctr = b.op("Gather", [b.const(actr, hint="anchor_ctr"), loc], axis=0)
        a_size = b.op("Gather", [b.const(asize, hint="anchor_size"), loc], axis=0)
        # fcos.py: anchor_ctr + sign * (codes * anchor_size), then clip
        boxes = b.op("Add", [a_ctr, b.op("Mul", [sign, b.op("Mul", [codes, a_size])])])
        parts.append((_clip(b, boxes, size), vals, label, k))
    return n, *_concat(b, parts)


def _retinanet(b: _Builder, raw: dict[str, list[int]], params: PostprocessParams, size: tuple[int, int]):
    n, ac = raw[f"cls_{params.levels[0]}"][:2]
    c = ac // NUM_ANCHORS
    clip = b.const(np.float32(_BBOX_XFORM_CLIP), hint="xform_clip")
    half = b.const(0.5, hint="half")
    parts = []
    for lvl, stride in zip(params.levels, params.strides, strict=True):
        gh, gw = raw[f"cls_{lvl}"][2:]
        hw, hwa = gh * gw, gh * gw * NUM_ANCHORS
        # [N, A*C, H, W] -> [N, A, C, HW] -> [N, HW, A, C] -> [N, HWA*C], torchvision's order
        cls = b.op("Transpose", [b.reshape(f"cls_{lvl}", [n, NUM_ANCHORS, c, hw])], perm=[0, 3, 1, 2])
        score = b.op("Sigmoid", [b.reshape(cls, [n, hwa * c])])
        vals, idx, k = _threshold_topk(b, score, n, hwa * c, params)
        cc = b.const([c], np.int32, "C")
        anchor, label = b.op("Div", [idx, cc]), b.op("Mod", [idx, cc])
        box = b.op("Transpose", [b.reshape(f"box_{lvl}", [n, NUM_ANCHORS, 4, hw])], perm=[0, 3, 1, 2])
        deltas = b.gather_rows(b.reshape(box, [n, hwa, 4]), anchor, n, hwa, 4)  # [N, k, 4]
        actr, asize = _anchor_geometry(size, (gh, gw), int(stride))
        a_ctr = b.op("Gather", [b.const(actr, hint="anchor_ctr"), anchor], axis=0)  # [N, k, 2]
        a_size = b.op("Gather", [b.const(asize, hint="anchor_size"), anchor], axis=0)
        # retinanet.py's _decode_boxes, op for op
        dwdh = b.op("Min", [b.slice(deltas, 2, 4, 2), clip])
        pred = b.op("Add", [b.op("Mul", [b.slice(deltas, 0, 2, 2), a_size]), a_ctr])
        hlf = b.op("Mul", [half, b.op("Mul", [b.op("Exp", [dwdh]), a_size])])
        boxes = b.op("Concat", [b.op("Sub", [pred, hlf]), b.op("Add", [pred, hlf])], axis=2)
        parts.append((_clip(b, boxes, size), vals, label, k))
    return n, *_concat(b, parts)


def _faster_rcnn(b: _Builder, raw: dict[str, list[int]], params: PostprocessParams, size: tuple[int, int]):
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
    keep = b.op("Greater", [flat_scores, b.const(_float32_below(params.score_thresh))])
    keep = b.op("And", [keep, b.op("GreaterOrEqual", [bw, min_size])])
    keep = b.op("And", [keep, b.op("GreaterOrEqual", [bh, min_size])])
    valid_kc = b.reshape(
        b.op("Expand", [b.op("Unsqueeze", [valid, b.const([2], np.int64)]), b.const([n, k, c], np.int64)]),
        [n, k * c],
    )
    keep = b.op("And", [keep, valid_kc])
    masked = b.op("Where", [keep, flat_scores, b.const(_EMPTY)])
    labels = b.const(np.tile(np.arange(c, dtype=np.int64), (n, k)), np.int32, "labels")  # [N, K*C]
    return n, boxes, masked, labels, k * c


def _concat(b: _Builder, parts: list[tuple[str, str, str, int]]) -> tuple[str, str, str, int]:
    """Levels end to end (level-major, as the numpy decoders concatenate them)."""
    boxes = b.op("Concat", [p[0] for p in parts], axis=1)
    scores = b.op("Concat", [p[1] for p in parts], axis=1)
    labels = b.op("Concat", [p[2] for p in parts], axis=1)
    return boxes, scores, labels, sum(p[3] for p in parts)


def _nms_and_top(
    b: _Builder, n: int, m: int, c: int, boxes: str, scores: str, labels: str, params: PostprocessParams
) -> None:
    """Class-aware NMS on [N, M] candidates (score ``_EMPTY`` = none), then the top K -> the outputs."""
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
    selected = b.op(
        "NonMaxSuppression",
        [
            boxes,
            per_class,
            b.const([k], np.int64, "max_per_class"),
            b.const([_float32_below(params.nms_thresh)], hint="iou"),
            b.const([_NMS_SCORE_FLOOR], hint="score_floor"),
        ],
        center_point_box=0,
    )  # [S, 3] (batch, class, candidate)
    bm = b.op("Gather", [selected, b.const([0, 2], np.int64, "bm")], axis=1)  # [S, 2]
    kept_scores = b.op("GatherND", [scores, bm])  # [S]
    kept = b.op("ScatterND", [b.const(np.full((n, m), _EMPTY), hint="none"), bm, kept_scores])  # [N, M]
    top, idx = b.multi_op("TopK", [kept, b.const([k], np.int64, "kfinal")], 2, axis=1, largest=1, sorted=1)
    idx = b.op("Cast", [idx], to=TensorProto.INT32)
    valid = b.op("Greater", [top, b.const(_NMS_SCORE_FLOOR)])  # [N, K]
    det_boxes = b.gather_rows(boxes, idx, n, m, 4)
    b.op(
        "Where",
        [b.op("Unsqueeze", [valid, b.const([2], np.int64)]), det_boxes, b.const(0.0)],
        out="det_boxes",
    )
    b.op("Where", [valid, top, b.const(0.0)], out="det_scores")
    det_labels = b.gather_rows(labels, idx, n, m, None)
    b.op("Where", [valid, det_labels, b.const(-1, np.int32)], out="det_labels")
    b.op(
        "ReduceSum",
        [b.op("Cast", [valid], to=TensorProto.INT32), b.const([1], np.int64)],
        out="num_dets",
        keepdims=0,
    )

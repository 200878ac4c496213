"""The end-to-end engine contract as ONNX: a uint8 image head and a decode + NMS tail, standard ops only.

``detection_tail`` builds a graph whose inputs are a raw engine's outputs (``cls_p3``..., or Faster
R-CNN's ``proposals``/``roi_*``) and whose outputs are the static detections ``det_boxes`` [N, K, 4]
(input pixels), ``det_scores`` [N, K], ``det_labels`` [N, K] (int32, -1 past ``num_dets``) and
``num_dets`` [N] (int32), K = ``detections_per_img``. Its one more input, ``score_thresh`` float32 [N],
is each image's score threshold (the largest float32 <= the threshold, as the numpy decoder compares):
one engine serves mAP's low threshold and deploy's higher one, and at deploy's it skips the work that
only low scores need (the per-level top-k cut, most of NMS). ``uint8_head`` builds a graph from the
letterboxed ``uint8 [N, H, W, 3]`` RGB image (``images_u8``) and the resized image's ``valid_hw``
[N, 2] (int32 rows, cols) to the float ``images`` [N, 3, H, W] the network takes. ``edgefpn.e2e.graft``
joins them to a network.

Semantics follow ``edgefpn.postprocess`` (numpy) op for op where ONNX allows:

* scores, thresholds (strict ``>`` against the largest float32 <= the threshold, as the numpy decoder
  compares), box decode in the same float32 op order, clipping;
* FCOS / RetinaNet: all levels at once on P positions (level-major; a location, or a location's
  anchor): scores [N, C, P] and boxes [N, P, 4] go to one ``NonMaxSuppression`` (per class, so
  class-aware; IoU on the real coordinates, as the numpy NMS); the per-level top-k on the flattened
  ``[HW(A), C]`` candidates (``TopK`` breaks ties by the lower index, as ``_topk_positions``) runs
  under an ``If`` only when a level has more than ``topk_candidates`` passing scores, since otherwise
  it keeps them all; the survivors' global top K is taken in (level, position, class) order, numpy's
  candidate order wherever scores tie;
* Faster R-CNN: class-specific boxes as candidates, ``NonMaxSuppression`` per class on class-masked
  scores, each class capped at K, then the global top K by score, ties by candidate order.

Where they cannot be identical: ``Sigmoid``/``Exp``/``Softmax`` are the runtime's kernels (ONNX Runtime's
MLAS logistic is a polynomial within ~1 ulp), so a score at a threshold or top-k cut can fall the other
way; and the NMS op's order among *exactly* equal scores inside one class is the runtime's (numpy keeps
candidate order). Both show as rare single-box differences, which ``check`` measures per engine.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgefpn.backends.base import THRESH_INPUT
from edgefpn.e2e.builder import (
    _BBOX_XFORM_CLIP,
    _EMPTY,
    _NMS_SCORE_FLOOR,
    _Builder,
    _clip,
    _model,
    _nms,
    _outputs,
    _vi,
)
from edgefpn.e2e.rcnn import faster_rcnn_tail
from edgefpn.postprocess import PostprocessParams
from edgefpn.postprocess.fcos import _fcos_anchors
from edgefpn.postprocess.retinanet import NUM_ANCHORS, _anchor_geometry

__all__ = ["DET_OUTPUTS", "GRAPH_VERSION", "THRESH_INPUT", "U8_INPUTS", "detection_tail", "uint8_head"]

# Part of every e2e artifact's config hash: bump it whenever the graph this module emits changes, so
# that e2e files made by an older edgefpn are rebuilt rather than found up to date.
# 3: the head masks the padding before its Transpose; 4: the one-stage tail runs on all levels at once,
# its per-level top-k only where it binds (If); 5: the score threshold is an input (score_thresh), the
# head works on [N, H, W*3]
GRAPH_VERSION = 5

DET_OUTPUTS = ("det_boxes", "det_scores", "det_labels", "num_dets")
U8_INPUTS = ("images_u8", "valid_hw")


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
    # The element-wise work runs on [N, H, W*3] (a row of interleaved RGB), so every broadcast is over
    # a long contiguous span: ONNX Runtime's broadcasting kernels crawl over a trailing dim of 3 or 1
    # (measured on the default INT8 graph: the [N, H, W, 3] mask Where alone took 1.5 ms, 0.1 ms here),
    # and its layout optimiser pushes a Transpose put first back through the element-wise ops.
    x = b.op("Cast", [b.reshape("images_u8", [batch, h, w * 3])], to=TensorProto.FLOAT)  # [N, H, W*3]
    x = b.op("Mul", [x, b.const(np.tile(coef[0], w).reshape(1, 1, w * 3), hint="scale")])
    x = b.op("Add", [x, b.const(np.tile(coef[1], w).reshape(1, 1, w * 3), hint="offset")])
    vh = b.reshape(b.slice("valid_hw", 0, 1, 1), [batch, 1, 1])
    vw = b.reshape(b.slice("valid_hw", 1, 2, 1), [batch, 1, 1])
    rows = b.op("Less", [b.const(np.arange(h).reshape(1, h, 1), np.int32, "rows"), vh])  # [N, H, 1]
    cols = b.op("Less", [b.const((np.arange(w * 3) // 3).reshape(1, 1, w * 3), np.int32, "cols"), vw])
    x = b.op("Where", [b.op("And", [rows, cols]), x, b.const(0.0, hint="zero")])  # [N, H, W*3]
    # The layout change last, right before the network: OpenVINO then merges it with the reorder its
    # first convolution does anyway (measured on the default INT8 IR: the head's Transpose went from
    # ~0.11 ms to under 0.01 ms); with the mask after it, both ran as separate passes.
    b.op("Transpose", [b.reshape(x, [batch, h, w, 3])], perm=[0, 3, 1, 2], out=out)  # [N, 3, H, W]
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


def detection_tail(
    arch: str,
    raw_outputs: dict[str, list[int]],
    params: PostprocessParams,
    input_size: tuple[int, int],
    *,
    opset: int = 17,
) -> onnx.ModelProto:
    """The decode + NMS graph of ``arch`` on the raw outputs ``raw_outputs`` (name -> static shape) and
    ``score_thresh`` [N]. ``params.score_thresh`` is only recorded (the metadata's default); the graph
    compares against its input.

    Raises:
        ValueError: an arch without an in-graph decoder, or outputs that do not fit it.
    """
    b = _Builder("e2e")
    h, w = input_size
    if arch in ("fcos", "retinanet", "retinanet_v2"):
        _one_stage(b, "fcos" if arch == "fcos" else "retinanet", raw_outputs, params, (h, w))
        n = raw_outputs[f"cls_{params.levels[0]}"][0]
    elif arch == "faster_rcnn":
        faster_rcnn_tail(b, raw_outputs, params, (h, w))
        n = raw_outputs["roi_cls"][0]
    else:
        raise ValueError(
            f"no in-graph decode for arch {arch!r}; valid: fcos, retinanet, retinanet_v2, faster_rcnn"
        )
    k = params.detections_per_img
    inputs = [_vi(name, TensorProto.FLOAT, shape) for name, shape in raw_outputs.items()]
    inputs.append(_vi(THRESH_INPUT, TensorProto.FLOAT, [n]))
    outputs = [
        _vi("det_boxes", TensorProto.FLOAT, [n, k, 4]),
        _vi("det_scores", TensorProto.FLOAT, [n, k]),
        _vi("det_labels", TensorProto.INT32, [n, k]),
        _vi("num_dets", TensorProto.INT32, [n]),
    ]
    graph = helper.make_graph(b.nodes, "edgefpn_detection_tail", inputs, outputs, b.inits)
    return _model(graph, opset)


def _one_stage(b: _Builder, arch: str, raw: dict[str, list[int]], params: PostprocessParams, size) -> None:
    """FCOS / RetinaNet: decode + class-aware NMS + top K over every level at once -> the outputs.

    Levels are concatenated first and every op runs once on all P positions (a location, or a
    location's anchor; level-major, then torchvision's order): OpenVINO pays per node as much as per
    element at these sizes, and a per-level chain was ~5x the nodes. Scores are ``[N, C, P]`` and boxes
    ``[N, P, 4]``, which is what ``NonMaxSuppression`` takes, so no candidate is gathered before NMS.
    The per-level top-k (numpy's ``_select_topk``) only binds on levels with more than
    ``topk_candidates`` scores: there a ``TopK`` keeps the k best passing scores and the rest become
    ``_EMPTY`` (ties at the cut by lower index, as numpy). The final top K runs on the kept scores in
    (level, position, class) order, which is numpy's candidate order wherever scores tie.
    """
    n, first_c = raw[f"cls_{params.levels[0]}"][:2]
    a = 1 if arch == "fcos" else NUM_ANCHORS
    c = first_c // a
    cls, ctr, codes, actr, asize, spans = [], [], [], [], [], []
    for lvl, stride in zip(params.levels, params.strides, strict=True):
        gh, gw = raw[f"cls_{lvl}"][2:]
        hw = gh * gw
        if arch == "fcos":  # [N, C, HW], [N, 1, HW], [N, 4, HW]: position = location
            cls.append(b.reshape(f"cls_{lvl}", [n, c, hw]))
            ctr.append(b.reshape(f"ctr_{lvl}", [n, 1, hw]))
            codes.append(b.reshape(f"box_{lvl}", [n, 4, hw]))
            geometry = _fcos_anchors(size, (gh, gw), int(stride))  # [HW, 4] each
        else:  # [N, A*C, H, W] -> [N, C, HW*A]: position = (location, anchor), torchvision's order
            x = b.op("Transpose", [b.reshape(f"cls_{lvl}", [n, a, c, hw])], perm=[0, 2, 3, 1])
            cls.append(b.reshape(x, [n, c, hw * a]))
            x = b.op("Transpose", [b.reshape(f"box_{lvl}", [n, a, 4, hw])], perm=[0, 2, 3, 1])
            codes.append(b.reshape(x, [n, 4, hw * a]))
            geometry = _anchor_geometry(size, (gh, gw), int(stride))  # [HWA, 2] each
        actr.append(geometry[0])
        asize.append(geometry[1])
        spans.append(hw * a)
    p = sum(spans)
    score = b.op("Sigmoid", [b.op("Concat", cls, axis=2)])  # [N, C, P]
    if arch == "fcos":  # torchvision's FCOS score: sqrt(cls * ctr)
        ctrs = b.op("Sigmoid", [b.op("Concat", ctr, axis=2)])  # [N, 1, P]
        score = b.op("Sqrt", [b.op("Mul", [score, ctrs])])
    passing = b.op("Greater", [score, b.reshape(THRESH_INPUT, [n, 1, 1])])  # per image
    masked = _level_topk(b, b.op("Where", [passing, score, b.const(_EMPTY)]), n, c, spans, params)
    deltas = b.op("Transpose", [b.op("Concat", codes, axis=2)], perm=[0, 2, 1])  # [N, P, 4]
    a_ctr = b.const(np.concatenate(actr), hint="anchor_ctr")
    a_size = b.const(np.concatenate(asize), hint="anchor_size")
    if arch == "fcos":  # fcos.py: anchor_ctr + sign * (codes * anchor_size)
        sign = b.const([-1, -1, 1, 1], hint="ltrb_sign")
        boxes = b.op("Add", [a_ctr, b.op("Mul", [sign, b.op("Mul", [deltas, a_size])])])
    else:  # retinanet.py's _decode_boxes, op for op
        dwdh = b.op("Min", [b.slice(deltas, 2, 4, 2), b.const(np.float32(_BBOX_XFORM_CLIP), hint="clip")])
        pred = b.op("Add", [b.op("Mul", [b.slice(deltas, 0, 2, 2), a_size]), a_ctr])
        hlf = b.op("Mul", [b.const(0.5, hint="half"), b.op("Mul", [b.op("Exp", [dwdh]), a_size])])
        boxes = b.op("Concat", [b.op("Sub", [pred, hlf]), b.op("Add", [pred, hlf])], axis=2)
    boxes = _clip(b, boxes, size)  # [N, P, 4]
    selected = _nms(b, boxes, masked, params)  # [S, 3] (batch, class, position)
    kept = b.op(
        "ScatterND",
        [b.const(np.full((n, c, p), _EMPTY), hint="none"), selected, b.op("GatherND", [masked, selected])],
    )  # [N, C, P]: the NMS survivors' scores, _EMPTY elsewhere
    flat = b.reshape(b.op("Transpose", [kept], perm=[0, 2, 1]), [n, p * c])  # (position, class) order
    k = params.detections_per_img
    if p * c < k:  # pad with empty candidates so that TopK can take K
        flat = b.op("Concat", [flat, b.const(np.full((n, k - p * c), _EMPTY), hint="pad")], axis=1)
    top, idx = b.multi_op("TopK", [flat, b.const([k], np.int64, "kfinal")], 2, axis=1, largest=1, sorted=1)
    idx = b.op("Cast", [idx], to=TensorProto.INT32)
    cc = b.const([c], np.int32, "C")
    pos = b.op("Min", [b.op("Div", [idx, cc]), b.const([p - 1], np.int32, "last")])  # padding -> any box
    _outputs(b, top, b.gather_rows(boxes, pos, n, p, 4), b.op("Mod", [idx, cc]))


def _level_topk(b: _Builder, masked: str, n: int, c: int, spans: list[int], params: PostprocessParams) -> str:
    """``masked`` [N, C, P] with each level's scores cut to its ``topk_candidates`` best (numpy's
    ``_select_topk``: flattened ``[HW(A), C]`` order, ties by lower index), where that can bind."""
    k = params.topk_candidates
    if all(span * c <= k for span in spans):
        return masked
    pieces, start = [], 0
    for span in spans:
        level = b.slice(masked, start, start + span, 2)  # [N, C, span]
        start += span
        if span * c <= k:
            pieces.append(level)
            continue

        def cut(level: str = level, span: int = span) -> str:
            flat = b.reshape(b.op("Transpose", [level], perm=[0, 2, 1]), [n, span * c])
            vals, idx = b.multi_op(
                "TopK", [flat, b.const([k], np.int64, "k")], 2, axis=1, largest=1, sorted=1
            )
            empty = b.const(np.full((n, span * c), _EMPTY), hint="empty")
            kept = b.op("ScatterElements", [empty, idx, vals], axis=1)  # [N, span*C]: the top k, _EMPTY else
            return b.op("Transpose", [b.reshape(kept, [n, span, c])], perm=[0, 2, 1])

        # The cut changes nothing unless more than k scores pass (never at a trained model's usual
        # levels): run it only then. The count is over the whole batch, so "no cut" is exact per image.
        passing = b.op("Cast", [b.op("Greater", [level, b.const(_NMS_SCORE_FLOOR)])], to=TensorProto.INT32)
        count = b.op("ReduceSum", [passing], keepdims=0)  # [] over N, C and span
        binds = b.op("Greater", [count, b.const(k, np.int32, "k_i32")])
        pieces.append(b.op_if(binds, cut, level, TensorProto.FLOAT, [n, c, span]))
    return b.op("Concat", pieces, axis=2)

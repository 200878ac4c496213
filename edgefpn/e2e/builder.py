"""The pieces every end-to-end graph is built from: a node/constant builder, the shared NMS and output
tail, and the sentinel values (:mod:`edgefpn.e2e.graph` documents the semantics)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefpn.postprocess import PostprocessParams
from edgefpn.postprocess.nms import _float32_below

_MIN_OPSET = (
    13  # Softmax over one axis, ReduceSum with axes as an input; NonMaxSuppression/TopK/ScatterND: 11
)
_EMPTY = -1.0  # score of a dropped candidate: below every real score (>= 0), above nothing the NMS keeps
_NMS_SCORE_FLOOR = -0.5  # the NMS op's score_threshold: keeps every real candidate, drops the _EMPTY ones
_BBOX_XFORM_CLIP = math.log(1000.0 / 16)
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

    def op_if(
        self, cond: str, then: Callable[[], str], otherwise: str, elem: int, shape: Sequence[int]
    ) -> str:
        """``If(cond)``: the nodes ``then()`` adds, else ``otherwise`` unchanged; both ``elem`` of ``shape``.
        The branch reads the outer graph's values and constants (ONNX outer scope)."""
        outer, self.nodes = self.nodes, []
        try:
            self.op("Identity", [then()], out=(then_out := self.name("then")))
            then_nodes = self.nodes
            self.nodes = []
            self.op("Identity", [otherwise], out=(else_out := self.name("else")))
            else_nodes = self.nodes
        finally:
            self.nodes = outer
        branches = {
            "then_branch": helper.make_graph(
                then_nodes, self.name("then_g"), [], [_vi(then_out, elem, shape)]
            ),
            "else_branch": helper.make_graph(
                else_nodes, self.name("else_g"), [], [_vi(else_out, elem, shape)]
            ),
        }
        return self.op("If", [cond], **branches)

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


def _model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    # the lowest IR version the opset needs (make_model's default, the newest, is more than ONNX
    # Runtime reads)
    opsets = [helper.make_opsetid("", max(opset, _MIN_OPSET))]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def _clip(b: _Builder, boxes: str, input_size: tuple[int, int]) -> str:
    h, w = input_size
    lo = b.op("Max", [boxes, b.const(0.0)])
    return b.op("Min", [lo, b.const([w, h, w, h], hint="hi")])


def _nms(b: _Builder, boxes: str, scores: str, params: PostprocessParams) -> str:
    """Per-class ``NonMaxSuppression`` of ``scores`` [N, C, M] on ``boxes`` [N, M, 4], each class capped
    at K; ``_EMPTY`` scores fall below the op's score floor -> selected [S, 3] (batch, class, box)."""
    return b.op(
        "NonMaxSuppression",
        [
            boxes,
            scores,
            b.const([params.detections_per_img], np.int64, "max_per_class"),
            b.const([_float32_below(params.nms_thresh)], hint="iou"),
            b.const([_NMS_SCORE_FLOOR], hint="score_floor"),
        ],
        center_point_box=0,
    )


def _outputs(b: _Builder, top: str, boxes: str, labels: str) -> None:
    """The top K's scores [N, K], boxes [N, K, 4] and labels [N, K] -> the four static outputs; rows
    past the kept detections are zeros (labels -1)."""
    valid = b.op("Greater", [top, b.const(_NMS_SCORE_FLOOR)])  # [N, K]
    b.op("Where", [b.op("Unsqueeze", [valid, b.const([2], np.int64)]), boxes, b.const(0.0)], out="det_boxes")
    b.op("Where", [valid, top, b.const(0.0)], out="det_scores")
    b.op("Where", [valid, labels, b.const(-1, np.int32)], out="det_labels")
    b.op(
        "ReduceSum",
        [b.op("Cast", [valid], to=TensorProto.INT32), b.const([1], np.int64)],
        out="num_dets",
        keepdims=0,
    )

"""TensorRT compatibility lint for ONNX graphs: pure ``onnx`` + numpy, runs on any machine.

It catches, before a Jetson or a GPU box ever sees the file, the graph features that make TensorRT 10's
ONNX parser refuse a model or silently build something other than what was checked on the CPU:

* dynamic dimensions (edgefpn engines are static: one shape, one optimisation profile);
* an opset outside TensorRT 10's range, ops outside its ONNX operator support matrix, custom domains;
* INT64 where TensorRT rejects it (see :func:`_lint_int64` for the exact rule);
* Q/DQ that is not TensorRT's scheme: symmetric INT8 (zero point 0), positive constant scales,
  weights per-channel along the output-channel axis, activations per-tensor.

Each finding names the node (or tensor) and the op, so the fix is a search away in Netron.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgefpn.errors import ModelFileError

__all__ = ["Finding", "TENSORRT_OPS", "TENSORRT_OPSET_RANGE", "errors", "lint_onnx"]

# TensorRT 10.0 parses opsets 9..20 inclusive; later 10.x releases extend the top (10.15: 24). Above 20
# is a warning (needs a newer TensorRT 10.x), outside 9..24 an error.
TENSORRT_OPSET_RANGE = (9, 20)
_TENSORRT_OPSET_NEWEST = 24

# ONNX's Reduce* ops: all in the matrix below, all taking their axes as input 1 (ReduceSum from opset 13,
# the others from 18)
_REDUCE_OPS = (
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
)

# The ops marked "Y" in the ONNX-TensorRT operator support matrix for TensorRT 10.x
# (https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md). A literal set on purpose:
# reviewable, greppable, and updated deliberately when the matrix changes. Per-op restrictions (e.g.
# Resize modes) are not all modelled; the parser reports those by node at build time.
TENSORRT_OPS: frozenset[str] = frozenset(
    {
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "Attention",
        "AveragePool",
        "BatchNormalization",
        "BlackmanWindow",
        "Cast",
        "CastLike",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DeformConv",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GridSample",
        "GroupNormalization",
        "GRU",
        "HammingWindow",
        "HannWindow",
        "HardSigmoid",
        "HardSwish",
        "Hardmax",
        "Identity",
        "If",
        "ImageScaler",
        "InstanceNormalization",
        "IsInf",
        "IsNaN",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LRN",
        "LSTM",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "MeanVarianceNormalization",
        "Min",
        "Mish",
        "Mod",
        "Mul",
        "Neg",
        "NonMaxSuppression",
        "NonZero",
        "Not",
        "OneHot",
        "Or",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Range",
        "Reciprocal",
        *_REDUCE_OPS,
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "RMSNormalization",
        "RNN",
        "RoiAlign",
        "Round",
        "ScaledTanh",
        "Scan",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    }
)

_DEFAULT_DOMAINS = ("", "ai.onnx")

# Inputs that carry shapes, axes, indices or counts rather than data. INT64 is ONNX's mandated type for
# most of them, and TensorRT consumes them as shape tensors: INT64 there is always fine.
_SHAPE_INPUTS: Mapping[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Resize": frozenset({3}),
    "Upsample": frozenset(),
    "Pad": frozenset({1, 3}),
    "TopK": frozenset({1}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "GatherND": frozenset({1}),
    "ScatterElements": frozenset({1}),
    "ScatterND": frozenset({1}),
    "Split": frozenset({1}),
    "OneHot": frozenset({1}),
    "CumSum": frozenset({1}),
    "Range": frozenset({0, 1, 2}),
    "Trilu": frozenset({1}),
    # the in-graph NMS of the end-to-end graphs (edgefpn.e2e): max_output_boxes_per_class is a count
    "NonMaxSuppression": frozenset({2}),
    **{op: frozenset({1}) for op in _REDUCE_OPS},
}

# Which input of a weighted op is the weight, and which axis of that weight is the output channel.
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


@dataclass(frozen=True)
class Finding:
    """One lint result. ``node`` is the node name (or the tensor name for graph-level findings)."""

    severity: Literal["error", "warning"]
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        where = f"{self.node} ({self.op})" if self.op else self.node
        return f"{self.severity}: {where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def lint_onnx(model: str | Path | Any) -> list[Finding]:
    """Lint an ONNX file (path) or ``onnx.ModelProto`` for TensorRT 10. Errors first, then warnings.

    Raises:
        ModelFileError: ``model`` is a path that cannot be read as ONNX.
    """
    import onnx

    if isinstance(model, str | Path):
        from edgefpn.onnx_guard import check_graph, check_onnx_file

        path = Path(model)
        check_onnx_file(path)  # size, protobuf and external-data checks before onnx reads a byte
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError, OSError, ... for a bad file
            raise ModelFileError(f"{path}: cannot read as ONNX: {type(exc).__name__}: {exc}") from None
        check_graph(model, path)
    graph = model.graph
    consts = _constants(graph)
    findings = [
        *_lint_opset(model),
        *_lint_shapes(graph),
        *_lint_ops(graph),
        *_lint_int64(graph, consts),
        *_lint_qdq(graph, consts),
    ]
    return sorted(findings, key=lambda f: f.severity != "error")


# ----------------------------------------------------------------------------------------------
# the rules


def _lint_opset(model) -> Iterator[Finding]:
    lo, hi = TENSORRT_OPSET_RANGE
    for imp in model.opset_import:
        if imp.domain not in _DEFAULT_DOMAINS:
            continue  # custom domains are reported per node by _lint_ops
        v = imp.version
        if v < lo or v > _TENSORRT_OPSET_NEWEST:
            yield Finding(
                "error",
                "<model>",
                "",
                f"opset {v} is outside TensorRT 10's range {lo}..{_TENSORRT_OPSET_NEWEST}",
            )
        elif v > hi:
            yield Finding(
                "warning",
                "<model>",
                "",
                f"opset {v} needs a TensorRT 10.x newer than 10.0 (which parses {lo}..{hi})",
            )


def _dims(value) -> list[int | str] | None:
    t = value.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
        for d in t.tensor_type.shape.dim
    ]


def _lint_shapes(graph) -> Iterator[Finding]:
    initializers = {i.name for i in graph.initializer}
    severity: Literal["error", "warning"]
    for kind, values, severity in (
        ("input", graph.input, "error"),
        ("output", graph.output, "error"),
        ("value_info", graph.value_info, "warning"),
    ):
        for v in values:
            if v.name in initializers:
                continue  # old exporters list initializers as inputs
            dims = _dims(v)
            if dims is None:
                yield Finding(severity, v.name, "", f"graph {kind} has no static shape")
            elif any(isinstance(d, str) for d in dims):
                yield Finding(
                    severity,
                    v.name,
                    "",
                    f"graph {kind} has a dynamic dimension {dims}; "
                    "edgefpn engines are static (export with a fixed input size and batch)",
                )


def _all_nodes(graph) -> Iterator[Any]:
    """Every node, including those inside If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def _lint_ops(graph) -> Iterator[Finding]:
    for node in _all_nodes(graph):
        if node.domain not in _DEFAULT_DOMAINS:
            yield Finding(
                "error",
                node.name,
                node.op_type,
                f"custom op domain {node.domain!r}: TensorRT needs a plugin for it",
            )
        elif node.op_type not in TENSORRT_OPS:
            yield Finding(
                "error",
                node.name,
                node.op_type,
                "not supported by TensorRT 10's ONNX parser (see onnx-tensorrt docs/operators.md)",
            )
        elif node.op_type == "Resize":
            mode = _attr(node, "mode", b"nearest")
            if mode not in (b"nearest", b"linear"):
                yield Finding(
                    "error",
                    node.name,
                    node.op_type,
                    f"Resize mode {mode.decode()!r}: TensorRT supports nearest and linear",
                )


def _lint_int64(graph, consts: Mapping[str, np.ndarray]) -> Iterator[Finding]:
    """INT64 rule, pragmatic for a static CNN detector.

    * INT64 graph inputs/outputs are errors: the engine's I/O contract is float32 images in, float
      tensors out, and neither DLA nor TensorRT < 10 binds INT64.
    * INT64 initializers used only as shapes, axes or indices (Reshape shape, Slice starts, Resize
      sizes, ...) are fine: ONNX requires INT64 there and TensorRT treats them as shape tensors.
    * Any other INT64 initializer (arithmetic on INT64 data) is a warning: TensorRT 10 supports INT64
      only in a subset of layers (not Conv/MatMul, not on DLA), so it may fail to build or fall back.
    """
    import onnx

    int64 = onnx.TensorProto.INT64
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for v in values:
            if v.type.tensor_type.elem_type == int64 and v.name not in consts:
                yield Finding(
                    "error", v.name, "", f"graph {kind} is INT64; engine I/O must be float (or INT32)"
                )
    data_uses: dict[str, list[Any]] = {}
    for node in _all_nodes(graph):
        shape_idx = _SHAPE_INPUTS.get(node.op_type, frozenset())
        for i, name in enumerate(node.input):
            if name in consts and i not in shape_idx:
                data_uses.setdefault(name, []).append(node)
    for name, arr in consts.items():
        if arr.dtype == np.int64 and name in data_uses:
            node = data_uses[name][0]
            yield Finding(
                "warning",
                node.name,
                node.op_type,
                f"INT64 constant {name!r} used as data: TensorRT runs INT64 only in some layers",
            )


def _lint_qdq(graph, consts: Mapping[str, np.ndarray]) -> Iterator[Finding]:
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in _all_nodes(graph):
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    for node in _all_nodes(graph):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in _DEFAULT_DOMAINS:
            continue
        yield from _lint_qdq_node(node, consts, consumers)


def _lint_qdq_node(node, consts, consumers) -> Iterator[Finding]:
    def bad(message: str, severity: Literal["error", "warning"] = "error") -> Finding:
        return Finding(severity, node.name, node.op_type, message)

    x, scale_name = node.input[0], node.input[1]
    zp_name = node.input[2] if len(node.input) > 2 else ""
    scale = consts.get(scale_name)
    if scale is None:
        yield bad(f"scale {scale_name!r} is not a constant; TensorRT needs build-time scales")
        return
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        yield bad(
            f"scale {scale_name!r} has non-positive or non-finite values (min {float(np.min(scale)):.3g})"
        )
    if node.op_type == "DequantizeLinear" and x in consts and consts[x].dtype != np.int8:
        yield bad(
            f"dequantizes a {consts[x].dtype} constant (a quantized bias?); TensorRT dequantizes INT8 "
            "(quantize without bias quantization)"
        )
        return
    if zp_name:
        zp = consts.get(zp_name)
        if zp is None:
            yield bad(f"zero point {zp_name!r} is not a constant")
        elif zp.dtype != np.int8:
            yield bad(f"zero point is {zp.dtype}; TensorRT quantizes to signed INT8 only (symmetric)")
        elif np.any(zp != 0):
            nz = int(zp.flat[int(np.flatnonzero(zp)[0])])
            yield bad(f"zero point {nz} (asymmetric); TensorRT needs symmetric quantization, zero point 0")
    elif node.op_type == "QuantizeLinear" and _attr(node, "output_dtype", 0) == 0:
        yield bad("no zero point: ONNX then quantizes to UINT8; TensorRT needs an INT8 zero point of 0")

    per_channel = scale.size > 1
    axis = _attr(node, "axis", 1)
    weight = _weight_use(node, x, consts, consumers)
    if weight is None:
        if per_channel and x not in consts:
            yield bad(
                f"per-channel scale ({scale.size} values) on an activation; TensorRT quantizes "
                "activations per-tensor"
            )
        return
    w, consumer = weight
    if w.ndim == 0:
        return
    expected = _output_channel_axis(consumer, w.ndim)
    rank_axis = axis % w.ndim
    if not per_channel and w.shape[expected] > 1:
        yield bad(
            f"weight of {consumer.name or consumer.op_type} quantized per-tensor; per-channel (axis "
            f"{expected}) keeps INT8 accuracy",
            "warning",
        )
    elif per_channel and rank_axis != expected:
        yield bad(
            f"weight of {consumer.name or consumer.op_type} quantized along axis {axis}; TensorRT needs the "
            f"output-channel axis {expected}"
        )
    elif per_channel and scale.size != w.shape[expected]:
        yield bad(f"{scale.size} scales for {w.shape[expected]} output channels")


def _weight_use(node, x: str, consts, consumers) -> tuple[np.ndarray, Any] | None:
    """(weight array, weighted consumer) if this Q/DQ quantizes a weight constant, else None."""
    if x not in consts:
        return None
    out = node.output[0]
    frontier = [out]
    if node.op_type == "QuantizeLinear":  # constant -> Q -> DQ -> Conv: follow to the DQ
        frontier = [n.output[0] for n, _ in consumers.get(out, []) if n.op_type == "DequantizeLinear"]
    for name in frontier:
        for consumer, idx in consumers.get(name, []):
            if _WEIGHT_INPUT.get(consumer.op_type) == idx:
                return consts[x], consumer
    return None


def _output_channel_axis(consumer, rank: int) -> int:
    if consumer.op_type == "Conv":
        return 0  # W: [M, C/group, kH, kW]
    if consumer.op_type == "ConvTranspose":
        return 1  # W: [C, M/group, kH, kW]
    if consumer.op_type == "Gemm":
        return 0 if _attr(consumer, "transB", 0) else 1  # B: [K, N], or [N, K] when transposed
    return max(rank - 1, 0)  # MatMul B: [..., K, N]


# ----------------------------------------------------------------------------------------------
# helpers


def _attr(node, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _constants(graph) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs of the top-level graph, as numpy arrays."""
    from onnx import numpy_helper

    out = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out

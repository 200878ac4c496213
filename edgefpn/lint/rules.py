"""The lint's rules: one generator of :class:`~edgefpn.lint.findings.Finding` per concern (opset, static
shapes, supported ops, INT64, Q/DQ), each walking the ONNX graph against the tables of
:mod:`edgefpn.lint.tables`. ``onnx`` is imported inside the functions that need it, so importing the
lint costs numpy only; :func:`edgefpn.lint.lint_onnx` reads the file and runs them in order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np

from edgefpn.lint.findings import Finding
from edgefpn.lint.tables import (
    _DEFAULT_DOMAINS,
    _SHAPE_INPUTS,
    _TENSORRT_OPSET_NEWEST,
    _WEIGHT_INPUT,
    TENSORRT_OPS,
    TENSORRT_OPSET_RANGE,
)

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

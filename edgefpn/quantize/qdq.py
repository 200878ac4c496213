"""Explicit INT8 ONNX (QDQ) that runs in ONNX Runtime and is what TensorRT explicit quantization expects.

Symmetric INT8 for activations and weights (every zero point is an int8 0), per-channel weights on
the output-channel axis, biases left in float (TensorRT quantizes no bias; an int32 bias DQ is an
ORT-only idiom), and no Q/DQ pair on the graph outputs: the head tensors leave the graph in float.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx

from edgefpn.onnx_guard import save_onnx
from edgefpn.postprocess import split_output_name

__all__ = ["check_qdq", "node_groups", "quantize_qdq", "quantize_static_qdq", "strip_output_qdq"]


def quantize_qdq(
    model_path: Path,
    out: Path,
    cache: Path,
    method: str,
    *,
    exclude: Iterable[str] = (),
    op_types: Iterable[str] | None = None,
) -> None:
    """Write the QDQ model of ``model_path`` to ``out`` from the ranges in the ORT calibration ``cache``.

    ``op_types`` limits the quantized op types (None: ONNX Runtime's default, every op it can quantize).
    """
    from onnxruntime.quantization import QuantType

    model = quantize_static_qdq(
        model_path,
        out,
        cache,
        method,
        exclude=exclude,
        op_types=op_types,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    strip_output_qdq(model)
    save_onnx(model, out)


def quantize_static_qdq(
    model_path: Path,
    out: Path,
    cache: Path,
    method: str,
    *,
    exclude: Iterable[str],
    op_types: Iterable[str] | None,
    **options: Any,
) -> onnx.ModelProto:
    """ORT's ``quantize_static`` to per-channel QDQ from the ranges in ``cache``, quietly; returns ``out``.

    The part both INT8 flavours share (this module's and ``ort_cpu``'s); ``options`` (types, range,
    ``extra_options``) are what makes each flavour.
    """
    from onnxruntime.quantization import QuantFormat, quantize_static

    from edgefpn.calibration.ranges import calibration_method

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # ORT warns about pre-processing on every call; see the module notes
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(model_path),
                str(out),
                None,
                quant_format=QuantFormat.QDQ,  # ORT CPU fuses QDQ groups into QLinear* ops at load time
                per_channel=True,
                nodes_to_exclude=sorted(set(exclude)),
                op_types_to_quantize=sorted(op_types) if op_types is not None else None,
                calibrate_method=calibration_method(method),
                calibration_cache_path=cache,
                **options,
            )
    finally:
        quiet.setLevel(level)
    return onnx.load(str(out))


def strip_output_qdq(model: onnx.ModelProto) -> int:
    """Remove ``X -> QuantizeLinear -> DequantizeLinear -> output`` pairs: outputs stay float.

    ORT's QDQ quantizer quantizes a node's output even when it is a graph output; the detector's raw
    head tensors then carry an 8-bit rounding for no speed gain. Returns how many pairs were removed.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    removed = []
    for out in graph.output:
        dq = producer.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or consumers.get(q.output[0], 0) != 1:
            continue
        src = q.input[0]
        src_node = producer.get(src)
        if src_node is None or consumers.get(src, 0) != 1:
            continue  # the float tensor feeds others too: renaming it would need more surgery
        src_node.output[list(src_node.output).index(src)] = out.name
        removed += [q, dq]
    for node in removed:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    return len(removed) // 2


_LAYER_RE = re.compile(r"^/backbone/body/(layer\d+)/")
_FPN_BLOCK_RE = re.compile(r"^/backbone/fpn/(?:inner|layer)_blocks\.(\d+)/")


def node_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Node names grouped by network part and pyramid level, for sensitivity analysis.

    Backbone and FPN nodes are grouped by their exported names (``backbone/stem``, ``backbone/layer1``..,
    ``fpn/p3``.. , ``fpn/top-down``); the head's shared convolutions export without useful names, so
    those are grouped by which outputs they feed: ``head-cls/p3`` feeds only ``cls_p3``,
    ``head-reg/p3`` only ``box_p3`` / ``ctr_p3`` (any architecture: outputs are ``<branch>_p<k>``;
    other branch sets are named ``head-<b1>+<b2>/p3``). FPN block ``i`` is the ``i``-th returned level,
    counted from the finest level among the per-level outputs (``p3`` for FCOS and RetinaNet).
    """
    outputs = {o.name for o in model.graph.output}
    out_levels = [lvl for name in outputs if (lvl := split_output_name(name)[1]) is not None]
    first_level = min((int(lvl[1:]) for lvl in out_levels), default=3)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    reach: dict[int, frozenset[str]] = {}
    for n in reversed(model.graph.node):  # graph.node is topologically sorted
        r: set[str] = set()
        for t in n.output:
            if t in outputs:
                r.add(t)
            for c in consumers.get(t, ()):
                r |= reach.get(id(c), frozenset())
        reach[id(n)] = frozenset(r)
    groups: dict[str, list[str]] = {}
    for n in model.graph.node:
        groups.setdefault(_group_of(n.name, reach[id(n)], first_level), []).append(n.name)
    return dict(sorted(groups.items()))


# Head branch sets with a short group name; any other set is named after its branches.
_HEAD_GROUPS: dict[frozenset[str], str] = {
    frozenset({"cls"}): "head-cls",
    frozenset({"box"}): "head-reg",
    frozenset({"ctr"}): "head-reg",
    frozenset({"box", "ctr"}): "head-reg",
}


def _group_of(name: str, reached: frozenset[str], first_level: int) -> str:
    if name.startswith("/backbone/body/"):
        m = _LAYER_RE.match(name)
        return f"backbone/{m.group(1)}" if m else "backbone/stem"
    if name.startswith("/backbone/fpn/"):
        if m := _FPN_BLOCK_RE.match(name):
            return f"fpn/p{first_level + int(m.group(1))}"
        if "/extra_blocks/p6" in name:
            return "fpn/p6"
        if "/extra_blocks/" in name:
            return "fpn/p7"
        return "fpn/top-down"
    split = [split_output_name(o) for o in reached]
    kinds = frozenset(branch for branch, _ in split)
    levels = {level for _, level in split}
    if len(levels) == 1 and None not in levels:
        (level,) = levels
        return f"{_HEAD_GROUPS.get(kinds) or 'head-' + '+'.join(sorted(kinds))}/{level}"
    return "other"


def check_qdq(model: onnx.ModelProto) -> list[str]:
    """Problems that make a QDQ model unfit for TensorRT explicit quantization (empty: fine).

    Every Q/DQ zero point must be an int8 zero; every weight DQ must be per-channel on axis 0 with one
    scale per output channel.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    problems = []
    conv_weights = {n.input[1]: n for n in model.graph.node if n.op_type == "Conv"}
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.input) < 3 or n.input[2] not in inits:
            problems.append(f"{n.name}: no constant zero point")
            continue
        zp = inits[n.input[2]]
        arr = numpy_helper.to_array(zp)
        if zp.data_type != onnx.TensorProto.INT8 or arr.any():
            problems.append(
                f"{n.name}: zero point {arr.ravel()[:4]} ({onnx.TensorProto.DataType.Name(zp.data_type)})"
            )
    for w_name, conv in conv_weights.items():
        dq = producer.get(w_name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        out_channels = inits[dq.input[0]].dims[0]
        scale = numpy_helper.to_array(inits[dq.input[1]])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if scale.shape != (out_channels,) or axis != 0:
            problems.append(
                f"{dq.name}: weight scale shape {list(scale.shape)} axis {axis}, "
                f"want [{out_channels}] on axis 0 ({conv.name})"
            )
    return problems

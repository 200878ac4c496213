"""The INT8 QDQ flavour for ONNX Runtime on CPU: what ORT's x86 kernels run fastest.

``model.int8.onnx`` (``qdq.quantize_qdq``) is shaped for TensorRT explicit quantization: symmetric
int8 activations and float biases. ONNX Runtime's CPU execution provider cannot fuse that graph:
a Conv whose bias is float, or whose activations are signed, stays a float Conv between a
DequantizeLinear and a QuantizeLinear, so every layer pays the conversions on top of the float
math (measured 0.89x of FP32 on the default model). This flavour, from the same calibration ranges:

* activations uint8, asymmetric (the U8S8 kernels: ``vpmaddubsw`` on AVX2, VNNI where present);
  after a ReLU the whole 0..255 range is used, not half of an int8 one;
* weights int8 in 7 bits (``reduce_range``: no int16 saturation in the AVX2 kernels), symmetric, per
  output channel (axis 0);
* biases int32 (scale = activation scale x weight scale): ORT's QDQ selectors only fold
  ``DQ -> Conv -> Q`` into a ``QLinearConv`` when the bias is an int32 DQ or absent;
* no Q/DQ on the graph outputs (``qdq.strip_output_qdq``), and no ``Q -> DQ`` pair between two float
  nodes (``prune_float_qdq``): around a float-fallback island such a pair only rounds and converts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import onnx

from edgefpn.onnx_guard import save_onnx
from edgefpn.quantize.qdq import quantize_static_qdq, strip_output_qdq

__all__ = ["SCHEME", "check_qdq_ort", "prune_float_qdq", "quantize_qdq_ort"]

SCHEME = {
    "activations": "uint8 asymmetric per-tensor",
    "weights": "int8 (7-bit range) symmetric per-channel (axis 0)",
    "bias": "int32",
    "outputs": "float",
    "target": "onnxruntime CPU (QLinearConv / QLinearAdd fusion)",
}


def quantize_qdq_ort(
    model_path: Path,
    out: Path,
    cache: Path,
    method: str,
    *,
    exclude: Iterable[str] = (),
    op_types: Iterable[str] | None = None,
) -> None:
    """Write the ORT-CPU QDQ model of ``model_path`` to ``out`` from the ranges in ``cache``.

    Same arguments as ``qdq.quantize_qdq``; ``exclude`` nodes stay in float.
    """
    from onnxruntime.quantization import QuantType

    exclude = sorted(set(exclude))
    model = quantize_static_qdq(
        model_path,
        out,
        cache,
        method,
        exclude=exclude,
        op_types=op_types,
        # 7-bit weights: without VNNI, the x86 U8S8 kernels sum u8 x s8 pairs into int16
        # (vpmaddubsw), which saturates with 8-bit weights; measured on the tiny FCOS's box_p7:
        # cosine 0.93 fused vs 0.99 unfused at 8 bits, 0.99 / 0.99 at 7 bits.
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        # ORT drops a Relu whose uint8 Q starts at 0 (the Q clips), but strip_output_qdq then
        # removes that Q on a graph output (FCOS's box_pN = Relu(conv)) and the Relu with it.
        # Kept here, ORT's own Relu + Q fusion still removes it at load time.
        extra_options={
            "ActivationSymmetric": False,
            "WeightSymmetric": True,
            "QuantizeBias": True,
            "QDQKeepRemovableActivations": True,
        },
    )
    strip_output_qdq(model)
    prune_float_qdq(model, exclude, op_types)
    save_onnx(model, out)


def _is_float_node(node: onnx.NodeProto, exclude: set[str], quantized: set[str]) -> bool:
    """A node that computes in float: kept in float by name, or of an op type that is not quantized."""
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return False
    return node.name in exclude or node.op_type not in quantized


def _quantized_types(op_types: Iterable[str] | None) -> set[str]:
    from edgefpn.calibration.ranges import ort_op_types

    return set(op_types) if op_types is not None else set(ort_op_types())  # quantize_static's default


def prune_float_qdq(
    model: onnx.ModelProto, exclude: Iterable[str] = (), op_types: Iterable[str] | None = None
) -> int:
    """Let float consumers of a float tensor read it directly, not through ``Q -> DQ``.

    ``T -> Q -> DQ -> float node``, where ``T`` comes from a float node (or is a graph input), only
    rounds ``T`` to 8 bits and converts twice: the float node reads ``T`` itself afterwards. The pair
    stays where its producer is a quantized node (there the Q is what makes ORT fuse the producer
    into a ``QLinear*`` op, and ``T`` does not exist at run time) and for quantized consumers.
    ``exclude`` and ``op_types`` are the quantizer's: which nodes it left in float by name, and which op
    types it quantized (None: ONNX Runtime's default set). Returns how many consumer inputs were rewired.
    """
    graph = model.graph
    exclude, quantized = set(exclude), _quantized_types(op_types)
    producer = {o: n for n in graph.node for o in n.output}
    rewired = 0
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        src = q.input[0]
        src_node = producer.get(src)
        if src_node is not None and not _is_float_node(src_node, exclude, quantized):
            continue  # a quantized producer: the Q is its fused output
        for dq in [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]]:
            for node in graph.node:
                if not _is_float_node(node, exclude, quantized):
                    continue
                for k, name in enumerate(node.input):
                    if name == dq.output[0]:
                        node.input[k] = src
                        rewired += 1
    _drop_dead_qdq(graph)
    return rewired


def _drop_dead_qdq(graph: onnx.GraphProto) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [
            n
            for n in graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)
        ]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)


def check_qdq_ort(
    model: onnx.ModelProto, exclude: Iterable[str] = (), op_types: Iterable[str] | None = None
) -> list[str]:
    """Problems that keep ORT's CPU kernels off the fast path (empty: fine).

    Activation Q/DQ are uint8; weight DQs are int8, zero-point 0, one scale per output channel on
    axis 0; a quantized Conv's bias is an int32 DQ; no ``Q -> DQ`` pair joins two float nodes.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    problems = []
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3:
            continue
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            continue  # a constant (weight, bias, an Add's operand): its type is checked below for Conv
        zp = inits.get(n.input[2])
        if zp is None:
            problems.append(f"{n.name}: no constant zero point")
        elif zp.data_type != onnx.TensorProto.UINT8:
            problems.append(
                f"{n.name}: activation zero point type {onnx.TensorProto.DataType.Name(zp.data_type)}, "
                "want UINT8"
            )
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = producer.get(conv.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue  # kept in float
        weight = inits[dq.input[0]]
        zp = inits.get(dq.input[2]) if len(dq.input) > 2 else None
        if weight.data_type != onnx.TensorProto.INT8 or zp is None or numpy_helper.to_array(zp).any():
            problems.append(f"{dq.name}: weight is not int8 with zero point 0")
        out_channels = weight.dims[0]
        scale = numpy_helper.to_array(inits[dq.input[1]])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if scale.shape != (out_channels,) or axis != 0:
            problems.append(
                f"{dq.name}: weight scale shape {list(scale.shape)} axis {axis}, want per-channel axis 0"
            )
        if len(conv.input) > 2 and conv.input[2]:
            bias = producer.get(conv.input[2])
            if (
                bias is None
                or bias.op_type != "DequantizeLinear"
                or inits[bias.input[0]].data_type != onnx.TensorProto.INT32
            ):
                problems.append(f"{conv.name}: float bias (ORT fuses no QLinearConv with it)")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if n := prune_float_qdq(copy, exclude, op_types):
        problems.append(f"{n} float consumer input(s) read a Q -> DQ pair between float nodes")
    return problems

"""prune_float_qdq on a hand-built graph: which Q -> DQ pairs are conversions only, and which make a
fusion."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefpn.quantize.ort_cpu import check_qdq_ort, prune_float_qdq


def _graph() -> onnx.ModelProto:
    """x -> Sigmoid (float, "island") -> t -> Q -> DQ -> {Tanh (float), Conv (quantized, DQ weight) -> Q ->
    DQ -> y}."""
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.uint8), "zp"),
        numpy_helper.from_array(np.ones((2, 2, 1, 1), np.int8), "w_q"),
        numpy_helper.from_array(np.full((2,), 0.1, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros((2,), np.int8), "w_zp"),
        numpy_helper.from_array(np.zeros((2,), np.int32), "b_q"),
        numpy_helper.from_array(np.full((2,), 0.002, np.float32), "b_s"),
        numpy_helper.from_array(np.zeros((2,), np.int32), "b_zp"),
    ]
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["t"], name="island"),
        helper.make_node("QuantizeLinear", ["t", "s", "zp"], ["t_q"], name="t_Q"),
        helper.make_node("DequantizeLinear", ["t_q", "s", "zp"], ["t_dq"], name="t_DQ"),
        helper.make_node("Tanh", ["t_dq"], ["u"], name="float_consumer"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="w_DQ", axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_zp"], ["b"], name="b_DQ", axis=0),
        helper.make_node("Conv", ["t_dq", "w", "b"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "s", "zp"], ["c_q"], name="c_Q"),
        helper.make_node("DequantizeLinear", ["c_q", "s", "zp"], ["y"], name="c_DQ"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 4, 4]) for n in ("x", "u", "y")]
    graph = helper.make_graph(nodes, "g", [vi[0]], vi[1:], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float_consumer_reads_the_float_tensor_and_the_fused_pair_stays() -> None:
    model = _graph()
    problems = check_qdq_ort(model, ["island"])
    assert len(problems) == 1 and "between float nodes" in problems[0]
    assert prune_float_qdq(model, ["island"]) == 1
    by_name = {n.name: n for n in model.graph.node}
    assert list(by_name["float_consumer"].input) == ["t"]  # no 8-bit rounding, no conversions
    assert list(by_name["conv"].input)[0] == "t_dq"  # the quantized Conv keeps its DQ input
    assert {"t_Q", "t_DQ", "c_Q", "c_DQ"} <= set(by_name)  # both pairs are needed for the QLinearConv
    assert check_qdq_ort(model, ["island"]) == []


def test_a_pair_feeding_only_float_nodes_is_removed() -> None:
    model = _graph()
    graph = model.graph
    conv = next(n for n in graph.node if n.name == "conv")
    for name in ("conv", "c_Q", "c_DQ", "w_DQ", "b_DQ"):
        graph.node.remove(next(n for n in graph.node if n.name == name))
    del conv
    graph.output.remove(next(o for o in graph.output if o.name == "y"))
    assert prune_float_qdq(model, ["island"]) == 1
    assert [n.op_type for n in graph.node] == ["Sigmoid", "Tanh"]
    assert {t.name for t in graph.initializer} == set()

"""FLOPs from the ONNX graph against hand-computed counts, and the CPU peak rules."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefpn.flops import CONVENTION, achieved, count_flops, cpu_peak, fp32_flop_per_cycle


def _conv_model(
    batch: int, cin: int, cout: int, hw: int, k: int, stride: int, groups: int
) -> onnx.ModelProto:
    import numpy as np

    w = numpy_helper.from_array(np.zeros((cout, cin // groups, k, k), np.float32), "w")
    node = helper.make_node(
        "Conv",
        ["x", "w"],
        ["y"],
        kernel_shape=[k, k],
        strides=[stride, stride],
        pads=[k // 2] * 4,
        group=groups,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_one_conv_has_the_hand_computed_flops():
    # 3x3 conv, 3 -> 8 channels, 32x32, stride 1, same padding: 2 x Cout x H x W x Cin x kH x kW
    result = count_flops(_conv_model(batch=1, cin=3, cout=8, hw=32, k=3, stride=1, groups=1))
    assert result["flops_per_image"] == 2 * 8 * 32 * 32 * 3 * 3 * 3 == 442_368
    assert result["by_op"] == {"Conv": 442_368}
    assert result["convention"] == CONVENTION and "2 x MACs" in CONVENTION


def test_grouped_strided_conv_is_per_image():
    # batch 2, 16 -> 32 channels in 4 groups, stride 2 on 20x20 -> 10x10 output, 3x3
    result = count_flops(_conv_model(batch=2, cin=16, cout=32, hw=20, k=3, stride=2, groups=4))
    assert result["batch"] == 2
    assert result["flops_per_image"] == 2 * 32 * 10 * 10 * (16 // 4) * 3 * 3


def test_gemm_and_matmul():
    import numpy as np

    b = numpy_helper.from_array(np.zeros((16, 10), np.float32), "b")
    c = numpy_helper.from_array(np.zeros((10, 5), np.float32), "c")
    nodes = [helper.make_node("Gemm", ["x", "b"], ["h"]), helper.make_node("MatMul", ["h", "c"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [b, c],
    )
    result = count_flops(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert result["by_op"] == {"Gemm": 2 * 16 * 10, "MatMul": 2 * 10 * 5}


@pytest.mark.parametrize(
    ("flags", "vendor", "family", "expected"),
    [
        ({"avx512f", "avx2", "fma"}, "GenuineIntel", 6, 64),
        ({"avx512f", "avx2", "fma"}, "AuthenticAMD", 0x19, 32),  # Zen 4 double-pumps AVX-512
        ({"avx512f", "avx2", "fma"}, "AuthenticAMD", 0x1A, 64),  # Zen 5
        ({"avx2", "fma"}, "GenuineIntel", 6, 32),
        ({"avx"}, "GenuineIntel", 6, 16),
    ],
)
def test_fp32_flop_per_cycle(flags, vendor, family, expected):
    assert fp32_flop_per_cycle(flags, vendor, family, "x86_64")[0] == expected


def test_cpu_peak_and_achieved():
    peak = cpu_peak(threads=1)
    assert peak["cores"] == 1 and peak["fp32_gflops"] >= 0
    assert peak["int8_gops"] == pytest.approx(peak["fp32_gflops"] * peak["int8_factor"], rel=1e-3)
    fake = {"fp32_gflops": 100.0, "int8_gops": 400.0}
    assert achieved(2.0, 40.0, "fp32", fake) == {
        "achieved_gflops": 50.0,
        "fraction_of_peak": 0.5,
        "peak_basis": "fp32",
    }
    assert achieved(2.0, 40.0, "int8", fake)["fraction_of_peak"] == 0.125

"""The TensorRT lint names each broken node; a clean exported model passes; `edgefpn trt-lint` exits 1 on
errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgefpn.cli import main
from edgefpn.errors import ModelFileError
from edgefpn.lint import TENSORRT_OPS, Finding, errors, lint_onnx

F32, I8 = TensorProto.FLOAT, TensorProto.INT8


def model(nodes, *, inputs=None, outputs=None, inits=(), opset=17, extra_opsets=()):
    inputs = inputs or [helper.make_tensor_value_info("images", F32, [1, 3, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", F32, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def conv_qdq(*, w_axis=0, w_scales=4, act_zp=0, act_scale_shape=(), bias_int32=False, act_zp_dtype=np.int8):
    """images -> Q -> DQ -> Conv(DQ(weight int8), [DQ(bias int32)]) -> y, with knobs to break it."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "w_q")
    w_scale = numpy_helper.from_array(np.full(w_scales, 0.1, np.float32), "w_scale")
    w_zp = numpy_helper.from_array(np.zeros(w_scales, np.int8), "w_zp")
    a_scale = numpy_helper.from_array(np.full(act_scale_shape, 0.05, np.float32), "a_scale")
    a_zp = numpy_helper.from_array(np.full(act_scale_shape, act_zp, act_zp_dtype), "a_zp")
    inits = [w, w_scale, w_zp, a_scale, a_zp]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "a_scale", "a_zp"], ["xq"], name="q_act"),
        helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zp"], ["xdq"], name="dq_act"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=w_axis),
    ]
    conv_in = ["xdq", "w"]
    if bias_int32:
        inits += [
            numpy_helper.from_array(np.zeros(4, np.int32), "b_q"),
            numpy_helper.from_array(np.full(4, 0.005, np.float32), "b_scale"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b"], name="dq_bias", axis=0))
        conv_in.append("b")
    nodes.append(helper.make_node("Conv", conv_in, ["y"], name="conv0", pads=[1, 1, 1, 1]))
    out = helper.make_tensor_value_info("y", F32, [1, 4, 8, 8])
    return model(nodes, outputs=[out], inits=inits)


def only(findings: list[Finding], node: str) -> list[Finding]:
    return [f for f in findings if f.node == node]


def test_clean_qdq_conv_passes():
    assert lint_onnx(conv_qdq()) == []


def test_dynamic_dimension_is_named():
    inp = helper.make_tensor_value_info("images", F32, ["N", 3, 8, 8])
    out = helper.make_tensor_value_info("y", F32, ["N", 3, 8, 8])
    found = lint_onnx(
        model([helper.make_node("Relu", ["images"], ["y"], name="relu")], inputs=[inp], outputs=[out])
    )
    assert {(f.severity, f.node) for f in found} == {("error", "images"), ("error", "y")}
    assert "dynamic dimension ['N', 3, 8, 8]" in str(only(found, "images")[0])


def test_asymmetric_zero_point_is_named():
    found = errors(lint_onnx(conv_qdq(act_zp=3)))
    assert {f.node for f in found} == {"q_act", "dq_act"}
    assert all("zero point 3" in f.message and "symmetric" in f.message for f in found)
    assert only(found, "q_act")[0].op == "QuantizeLinear"


def test_uint8_zero_point_is_an_error():
    found = errors(lint_onnx(conv_qdq(act_zp_dtype=np.uint8)))
    assert {f.node for f in found} == {"q_act", "dq_act"} and "uint8" in found[0].message


def test_unsupported_and_custom_ops_are_named():
    nodes = [
        helper.make_node("Unique", ["images"], ["u"], name="uniq"),
        helper.make_node("MyPlugin", ["images"], ["y"], name="mine", domain="com.example"),
    ]
    found = lint_onnx(model(nodes, extra_opsets=[("com.example", 1)]))
    assert "Unique" not in TENSORRT_OPS
    (uniq,) = only(found, "uniq")
    (mine,) = only(found, "mine")
    assert (uniq.severity, uniq.op) == ("error", "Unique") and "not supported" in uniq.message
    assert (mine.severity, mine.op) == ("error", "MyPlugin") and "com.example" in mine.message


def test_weight_scales_must_be_per_output_channel():
    (wrong_axis,) = errors(lint_onnx(conv_qdq(w_axis=1, w_scales=3)))
    assert wrong_axis.node == "dq_w" and "axis 1" in wrong_axis.message and "axis 0" in wrong_axis.message
    (per_tensor,) = lint_onnx(conv_qdq(w_scales=1))
    assert (per_tensor.severity, per_tensor.node) == (
        "warning",
        "dq_w",
    ) and "per-tensor" in per_tensor.message


def test_activation_scales_must_be_per_tensor():
    found = errors(lint_onnx(conv_qdq(act_scale_shape=(3,))))
    assert {f.node for f in found} == {"q_act", "dq_act"} and "activation" in found[0].message


def test_int32_bias_dequantize_is_an_error():
    (bias,) = errors(lint_onnx(conv_qdq(bias_int32=True)))
    assert bias.node == "dq_bias" and "int32" in bias.message


def test_non_positive_scale_is_an_error():
    m = conv_qdq()
    for init in m.graph.initializer:
        if init.name == "w_scale":
            init.CopyFrom(numpy_helper.from_array(np.array([0.1, 0.0, 0.1, 0.1], np.float32), "w_scale"))
    (bad,) = errors(lint_onnx(m))
    assert bad.node == "dq_w" and "non-positive" in bad.message


def test_opset_range_and_int64_io():
    relu = [helper.make_node("Relu", ["images"], ["y"], name="relu")]
    out = [helper.make_tensor_value_info("y", F32, [1, 3, 8, 8])]
    assert lint_onnx(model(relu, outputs=out, opset=7))[0].severity == "error"
    assert [f.severity for f in lint_onnx(model(relu, outputs=out, opset=22))] == ["warning"]
    cast = [helper.make_node("Cast", ["images"], ["y"], name="cast", to=TensorProto.INT64)]
    found = lint_onnx(
        model(cast, outputs=[helper.make_tensor_value_info("y", TensorProto.INT64, [1, 3, 8, 8])])
    )
    assert [(f.severity, f.node) for f in found] == [("error", "y")] and "INT64" in found[0].message


def test_shape_like_int64_constants_are_fine():
    shape = numpy_helper.from_array(np.array([1, 192], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["images", "shape"], ["y"], name="flat")]
    assert (
        lint_onnx(model(nodes, outputs=[helper.make_tensor_value_info("y", F32, [1, 192])], inits=[shape]))
        == []
    )


def test_unreadable_file_is_one_line_error(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(ModelFileError, match="not a protobuf ONNX model"):
        lint_onnx(bad)


def test_cli_lint_exit_codes(tmp_path):
    from tests.backends.test_openvino import make_tiny_onnx

    clean = make_tiny_onnx(tmp_path / "clean.onnx")
    broken = tmp_path / "broken.onnx"
    onnx.save(conv_qdq(act_zp=3), str(broken))
    ok = CliRunner().invoke(main, ["trt-lint", str(clean)])
    assert ok.exit_code == 0, ok.output
    assert "0 error(s), 0 warning(s)" in ok.output
    res = CliRunner().invoke(main, ["trt-lint", str(clean), str(broken)])
    assert res.exit_code == 1
    assert "q_act (QuantizeLinear): zero point 3" in res.output


def test_exported_detector_is_clean(tiny_run):
    _, run_dir = tiny_run
    assert lint_onnx(run_dir / "model.onnx") == []

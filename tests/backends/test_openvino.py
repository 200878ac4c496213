"""OpenVINO: conversion keeps the 15 output names, fp32 matches ONNX Runtime, precision is pinned to f32."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from edgefpn.backends import CAPABILITIES, RUNNERS, EngineSpec
from edgefpn.backends.onnxruntime import OnnxRuntimeRunner

pytest.importorskip("openvino", reason="needs the openvino extra: pip install 'edgefpn[openvino]'")

from edgefpn.backends.openvino import OpenVinoRunner, onnx_to_openvino  # noqa: E402

pytestmark = pytest.mark.openvino

OUTPUT_NAMES = [f"{k}_p{lvl}" for k in ("cls", "box", "ctr") for lvl in range(3, 8)]


def make_tiny_onnx(
    path: Path, *, seed: int = 0, size: int = 64, num_classes: int = 3, batch: int = 1
) -> Path:
    """A tiny FPN-shaped conv net exported by torch with the detector's 15 output names, in ~1 s."""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, 16, 3, stride=4, padding=1),
                nn.ReLU(),
            )
            self.down = nn.ModuleList(nn.Conv2d(16, 16, 3, stride=2, padding=1) for _ in range(4))
            self.cls = nn.Conv2d(16, num_classes, 3, padding=1)
            self.box = nn.Conv2d(16, 4, 3, padding=1)
            self.ctr = nn.Conv2d(16, 1, 3, padding=1)

        def forward(self, x):
            feats = [self.stem(x)]
            for conv in self.down:
                feats.append(torch.relu(conv(feats[-1])))
            return (
                *[self.cls(f) for f in feats],
                *[torch.relu(self.box(f)) for f in feats],
                *[self.ctr(f) for f in feats],
            )

    torch.manual_seed(seed)
    model = Tiny().eval()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; edgefpn uses it too
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(batch, 3, size, size),),
            str(path),
            input_names=["images"],
            output_names=OUTPUT_NAMES,
            opset_version=17,
            dynamo=False,
        )
    return path


def sample(size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)


def ort(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    with OnnxRuntimeRunner(EngineSpec("ort", "onnxruntime", "fp32", path), threads=1) as r:
        return r.infer({"images": x})


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return make_tiny_onnx(tmp_path_factory.mktemp("ov") / "model.onnx")


def test_registry_entries():
    assert RUNNERS["openvino"] is OpenVinoRunner
    assert CAPABILITIES["openvino"].precisions == ("fp32", "fp16", "int8")
    assert OpenVinoRunner.is_available() is True


def test_fp32_ir_matches_onnxruntime_and_runs_f32(tiny_onnx, tmp_path):
    names = onnx_to_openvino(tiny_onnx, tmp_path / "openvino/fp32/model.xml", compress_to_fp16=False)
    assert names == OUTPUT_NAMES
    x = sample()
    ref = ort(tiny_onnx, x)
    spec = EngineSpec("openvino-fp32", "openvino", "fp32", tmp_path / "openvino/fp32")  # the folder artifact
    with OpenVinoRunner(spec, threads=1) as runner:
        assert str(runner.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
        out = runner.infer({"images": x})
        again = runner.infer({"images": x})  # the reused InferRequest gives fresh, equal outputs
    assert list(out) == OUTPUT_NAMES
    for name in OUTPUT_NAMES:
        assert out[name].shape == ref[name].shape
        np.testing.assert_allclose(out[name], ref[name], atol=1e-4, rtol=0, err_msg=name)
        np.testing.assert_array_equal(out[name], again[name])


def test_runner_reads_inputs_in_place_but_returns_owned_outputs(tiny_onnx, tmp_path):
    """Inputs are shared with the request (no copy), so each call must see the array's current values;
    outputs must survive the next call, which overwrites the request's own output tensors."""
    onnx_to_openvino(tiny_onnx, tmp_path / "fp32/model.xml", compress_to_fp16=False)
    x = sample()
    other = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    with OpenVinoRunner(EngineSpec("ov", "openvino", "fp32", tmp_path / "fp32"), threads=1) as runner:
        first = runner.infer({"images": x})
        kept = {k: v.copy() for k, v in first.items()}
        buf = x.copy()
        runner.infer({"images": buf})
        buf[:] = other  # the same array object, new values: the next call must read them
        second = runner.infer({"images": buf})
    for name in OUTPUT_NAMES:
        np.testing.assert_array_equal(first[name], kept[name], err_msg=name)  # not overwritten
    np.testing.assert_allclose(second["cls_p3"], ort(tiny_onnx, other)["cls_p3"], atol=1e-4, rtol=0)
    assert not np.array_equal(second["cls_p3"], first["cls_p3"])


def test_fp16_ir_stores_fp16_weights_but_computes_f32(tiny_onnx, tmp_path):
    onnx_to_openvino(tiny_onnx, tmp_path / "fp32/model.xml", compress_to_fp16=False)
    onnx_to_openvino(tiny_onnx, tmp_path / "fp16/model.xml", compress_to_fp16=True)
    fp32_bin, fp16_bin = (tmp_path / p / "model.bin" for p in ("fp32", "fp16"))
    assert fp16_bin.stat().st_size < 0.6 * fp32_bin.stat().st_size
    x = sample()
    ref = ort(tiny_onnx, x)
    with OpenVinoRunner(
        EngineSpec("ov", "openvino", "fp16", tmp_path / "fp16/model.xml"), threads=1
    ) as runner:
        assert str(runner.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
        out = runner.infer({"images": x})
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(out[name], ref[name], atol=1e-2, rtol=0, err_msg=name)


def test_compiled_model_cache_is_keyed_by_ir_content(tmp_path):
    a = make_tiny_onnx(tmp_path / "a.onnx", seed=0)
    onnx_to_openvino(a, tmp_path / "ir/fp32/model.xml", compress_to_fp16=False)
    spec = EngineSpec("ov", "openvino", "fp32", tmp_path / "ir/fp32")
    with OpenVinoRunner(spec, threads=1) as runner:
        first_dir = runner.cache_dir
        first = runner.infer({"images": sample()})
    assert first_dir.parent == tmp_path / "ir/.ov-cache" and any(first_dir.iterdir())

    # same path, different weights: a new cache folder, never the stale blob
    b = make_tiny_onnx(tmp_path / "b.onnx", seed=1)
    onnx_to_openvino(b, tmp_path / "ir/fp32/model.xml", compress_to_fp16=False)
    with OpenVinoRunner(spec, threads=1) as runner:
        assert runner.cache_dir != first_dir
        second = runner.infer({"images": sample()})
    np.testing.assert_allclose(second["cls_p3"], ort(b, sample())["cls_p3"], atol=1e-4, rtol=0)
    assert not np.allclose(first["cls_p3"], second["cls_p3"])
    with OpenVinoRunner(spec, threads=1, hint="throughput") as runner:  # another config, another key
        assert runner.cache_dir not in (first_dir, None)


def test_int8_qdq_onnx_converts_and_agrees_with_onnxruntime(tiny_onnx, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": sample()}, {"images": -sample()}])

        def get_next(self):
            return next(self.batches, None)

    qdq = tmp_path / "model.int8.onnx"
    # 7-bit weights (reduce_range): on an x86 CPU without VNNI, ONNX Runtime's int8 kernels saturate an
    # int16 sum of 8-bit products (cosine 0.93 here on an AVX2-only VM), which is ORT's error, not OpenVINO's
    quantize_static(
        str(tiny_onnx),
        str(qdq),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    assert onnx_to_openvino(qdq, tmp_path / "int8/model.xml", compress_to_fp16=False) == OUTPUT_NAMES
    x = sample()
    ref = ort(qdq, x)
    with OpenVinoRunner(EngineSpec("ov", "openvino", "int8", tmp_path / "int8"), threads=1) as runner:
        out = runner.infer({"images": x})
    for name in OUTPUT_NAMES:
        a, b = out[name].ravel().astype(np.float64), ref[name].ravel().astype(np.float64)
        if np.linalg.norm(b) > 1e-6:
            assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99, name


def test_missing_ir_is_one_line_error(tmp_path):
    from edgefpn.errors import ModelFileError

    with pytest.raises(ModelFileError, match="OpenVINO IR not found"):
        OpenVinoRunner(EngineSpec("ov", "openvino", "fp32", tmp_path / "nope"), threads=1).__enter__()

"""TensorRT: the pure parts run everywhere; building and running engines needs tensorrt and an NVIDIA GPU.

The `tensorrt`-marked tests are real: on a GPU box with TensorRT 10 they build an fp16 engine from a
tiny ONNX, run it against ONNX Runtime, and show a foreign engine is refused before deserialization.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefpn.artifacts import read_manifest, write_manifest
from edgefpn.backends import CAPABILITIES, RUNNERS, EngineSpec
from edgefpn.backends.tensorrt import (
    DeviceInfo,
    TensorRTRunner,
    build_engine,
    build_flags,
    compat_problem,
    trtexec_command,
    unavailable_reason,
)
from edgefpn.config import TensorRTConfig
from edgefpn.errors import BackendUnavailable, ModelFileError

ORIN = DeviceInfo("Orin", "8.7", "12.6")
BUILT = {"tensorrt": {"version": "10.3.0", "compute_capability": "8.7", "device": "Orin"}}


# ----------------------------------------------------------------------------------------------
# everywhere


def test_registry_and_availability_never_raise():
    assert RUNNERS["tensorrt"] is TensorRTRunner
    assert CAPABILITIES["tensorrt"].needs_gpu and CAPABILITIES["tensorrt"].precisions == ("fp16", "int8")
    assert isinstance(TensorRTRunner.is_available(), bool)
    reason = unavailable_reason()
    assert reason is None or "tensorrt" in reason


def test_compat_exact_match_and_mismatches():
    assert compat_problem(BUILT, version="10.3.0", device=ORIN) is None
    assert "TensorRT 10.3.0, this machine has TensorRT 10.4.0" in compat_problem(
        BUILT, version="10.4.0", device=ORIN
    )
    msg = compat_problem(BUILT, version="10.3.0", device=DeviceInfo("H100", "9.0", "12.4"))
    assert "compute capability 8.7" in msg and "9.0" in msg
    assert "not installed" in compat_problem(BUILT, version=None, device=None)
    assert "does not record" in compat_problem({"stage": "build"}, version="10.3.0", device=ORIN)


def test_compat_version_and_hardware_compatible_engines():
    flexible = {
        "tensorrt": {**BUILT["tensorrt"], "version_compatible": True, "hardware_compatibility": "ampere_plus"}
    }
    assert compat_problem(flexible, version="10.5.1", device=DeviceInfo("A10", "8.6", None)) is None
    assert compat_problem(flexible, version="10.2.0", device=ORIN) is not None  # older runtime
    assert compat_problem(flexible, version="11.0.0", device=ORIN) is not None  # other major
    assert compat_problem(flexible, version="10.3.0", device=DeviceInfo("T4", "7.5", None)) is not None


def test_build_flags_and_trtexec_equivalent():
    s = TensorRTConfig()
    assert build_flags("fp16", s) == ["FP16"]
    assert build_flags("int8", s) == ["INT8", "FP16"]  # explicit (Q/DQ) quantization, no calibrator
    with pytest.raises(ValueError):
        build_flags("fp32", s)
    cmd = trtexec_command("../../model.int8.onnx", "model.engine", precision="int8", settings=s)
    assert cmd[:3] == ["trtexec", "--onnx=../../model.int8.onnx", "--saveEngine=model.engine"]
    assert {"--int8", "--fp16", "--memPoolSize=workspace:2048M", "--builderOptimizationLevel=3"} <= set(cmd)
    jetson = TensorRTConfig(dla_core=0, hardware_compatible=True, version_compatible=True, workspace_mb=512)
    cmd = trtexec_command("m.onnx", "m.engine", precision="fp16", settings=jetson, timing_cache="t.cache")
    assert {
        "--useDLACore=0",
        "--allowGPUFallback",
        "--hardwareCompatibilityLevel=ampere+",
        "--versionCompatible",
        "--timingCacheFile=t.cache",
        "--memPoolSize=workspace:512M",
    } <= set(cmd)
    assert "GPU_FALLBACK" in build_flags("fp16", jetson) and "VERSION_COMPATIBLE" in build_flags(
        "fp16", jetson
    )


@pytest.mark.skipif(unavailable_reason() is None, reason="tensorrt is usable here")
def test_runner_without_tensorrt_is_backend_unavailable(tmp_path):
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        TensorRTRunner(EngineSpec("t", "tensorrt", "fp16", tmp_path / "model.engine"), threads=1).__enter__()


@pytest.mark.skipif(unavailable_reason() is None, reason="tensorrt is usable here")
def test_cli_build_tensorrt_without_tensorrt_writes_nothing(run_copy):
    from edgefpn.cli import main

    overrides, run_dir = run_copy

    def snapshot():
        return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*")}

    before = snapshot()
    args = ["build", "--target", "tensorrt", "--out", str(run_dir)]
    for o in overrides:
        args += ["--set", o]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == BackendUnavailable.exit_code
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "`tensorrt` Python package" in lines[0] and "pip install tensorrt" in lines[0]
    assert snapshot() == before and not (run_dir / "tensorrt").exists()


# ----------------------------------------------------------------------------------------------
# GPU + TensorRT


def _fp16_engine(tmp_path: Path) -> tuple[Path, Path]:
    from edgefpn.pipeline.build import engine_path
    from tests.backends.test_openvino import make_tiny_onnx

    onnx_path = make_tiny_onnx(tmp_path / "model.onnx")
    engine = engine_path(tmp_path, "tensorrt", "fp16")
    settings = TensorRTConfig(workspace_mb=256)
    result = build_engine(
        onnx_path, engine, precision="fp16", settings=settings, cache_dir=tmp_path / "tensorrt"
    )
    write_manifest(
        engine, stage="build", config_hash="test", inputs={}, extra={"tensorrt": result.manifest(settings)}
    )
    return onnx_path, engine


@pytest.mark.tensorrt
def test_fp16_engine_matches_onnxruntime(trt, tmp_path):
    from edgefpn.backends.onnxruntime import OnnxRuntimeRunner

    onnx_path, engine = _fp16_engine(tmp_path)
    assert list((tmp_path / "tensorrt").glob("timing-*.cache"))
    # plain engine bytes: TensorRT deserializes the file as-is (as trtexec --loadEngine does)
    assert trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(engine.read_bytes()) is not None
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with OnnxRuntimeRunner(EngineSpec("ort", "onnxruntime", "fp32", onnx_path), threads=1) as r:
        ref = r.infer({"images": x})
    with TensorRTRunner(EngineSpec("trt", "tensorrt", "fp16", engine), threads=1) as r:
        out = r.infer({"images": x})
        again = r.infer({"images": x})
    assert set(out) == set(ref)
    for name, want in ref.items():
        assert out[name].shape == want.shape and out[name].dtype == np.float32
        np.testing.assert_allclose(out[name], want, atol=2e-2, rtol=2e-2, err_msg=name)
        np.testing.assert_array_equal(out[name], again[name])


@pytest.mark.tensorrt
def test_foreign_engine_refused_before_deserialization(trt, tmp_path, monkeypatch):
    _, engine = _fp16_engine(tmp_path)
    manifest = read_manifest(engine)
    manifest["tensorrt"]["version"] = "9.0.0"
    write_manifest(
        engine,
        stage="build",
        config_hash="test",
        inputs={},
        extra={k: v for k, v in manifest.items() if k == "tensorrt"},
    )

    def no_deserialize(*_a, **_k):
        raise AssertionError("deserialized an engine that should have been refused")

    monkeypatch.setattr(trt, "Runtime", no_deserialize)
    with pytest.raises(ModelFileError, match="built with TensorRT 9.0.0"):
        TensorRTRunner(EngineSpec("trt", "tensorrt", "fp16", engine), threads=1).__enter__()


@pytest.mark.tensorrt
def test_parser_errors_name_the_node(trt, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgefpn.errors import ExportError

    graph = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["y"], name="uniq")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ExportError, match="uniq"):
        build_engine(
            path, tmp_path / "bad.engine", precision="fp16", settings=TensorRTConfig(), cache_dir=None
        )


@pytest.mark.tensorrt
def test_batch_2_engine_runs_any_number_of_images_and_offline(trt, tmp_path):
    """A static batch-2 engine (export.batch=2) through the BatchedRunner and the offline scenario."""
    from edgefpn.backends import open_runner
    from edgefpn.backends.onnxruntime import OnnxRuntimeRunner
    from edgefpn.pipeline.build import engine_path
    from edgefpn.runtime.scenarios import offline_point
    from tests.backends.test_openvino import make_tiny_onnx

    one = make_tiny_onnx(tmp_path / "b1.onnx")
    two = make_tiny_onnx(tmp_path / "b2.onnx", batch=2)
    engine = engine_path(tmp_path, "tensorrt", "fp16")
    settings = TensorRTConfig(workspace_mb=256)
    result = build_engine(two, engine, precision="fp16", settings=settings, cache_dir=tmp_path / "tensorrt")
    write_manifest(
        engine, stage="build", config_hash="test", inputs={}, extra={"tensorrt": result.manifest(settings)}
    )
    spec = EngineSpec("trt", "tensorrt", "fp16", engine)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    with OnnxRuntimeRunner(EngineSpec("ort", "onnxruntime", "fp32", one), threads=1) as r:
        ref = [r.infer({"images": x[i : i + 1]}) for i in range(3)]
    with open_runner(spec, threads=1) as r:
        assert r.batch == 2 and r.io_shapes()["images"] == (2, 3, 64, 64)
        for k in (1, 2, 3):
            out = r.infer({"images": x[:k]})
            for name, value in out.items():
                assert value.shape[0] == k
                for i in range(k):
                    np.testing.assert_allclose(
                        value[i : i + 1], ref[i][name], atol=2e-2, rtol=2e-2, err_msg=name
                    )
    point = offline_point(
        spec, {"images": x[:1]}, threads=2, seconds=0.5, streams=2, requests=2, open_runner=open_runner
    )
    assert point["fps"] > 0 and point["conditions"]["batch"] == 2 and point["conditions"]["requests"] == 2

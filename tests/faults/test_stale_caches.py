"""A changed model, calibration set, preprocessing or backend version never reuses a
calibration, timing or compiled-model cache (nor a check report or benchmark measured with the old one).
"""

from __future__ import annotations

import dataclasses

import pytest

from edgefpn.backends.tensorrt import DeviceInfo, timing_cache_key
from edgefpn.config import TensorRTConfig, load_config
from tests.conftest import copy_run

ORT_UPGRADE = {"onnxruntime": "99.0.0", "openvino": "2099.0", "numpy": "9.9", "pillow": "99.0"}


def _upgrade_backends(monkeypatch) -> None:
    """Every installed-version lookup now answers a newer ONNX Runtime, OpenVINO, numpy and Pillow."""
    from edgefpn import artifacts

    real = artifacts.tool_versions
    monkeypatch.setattr(artifacts, "tool_versions", lambda: {**real(), **ORT_UPGRADE})


@pytest.fixture
def calib_cfg(tiny_run):
    from edgefpn.calibration import CalibrationSet

    overrides, run_dir = tiny_run
    cfg = load_config(None, overrides)
    return cfg, run_dir, CalibrationSet(cfg)


def test_calibration_key_covers_model_images_preprocessing_settings_and_backend(
    calib_cfg, monkeypatch, tmp_path
):
    from edgefpn.calibration import CalibrationSet, cache_key

    cfg, run_dir, calib = calib_cfg
    base = cache_key("m" * 64, calib, cfg)
    assert cache_key("m" * 64, CalibrationSet(cfg), cfg) == base  # stable: the control
    changed = {
        "model": cache_key("n" * 64, calib, cfg),
        "settings": cache_key(
            "m" * 64,
            calib,
            dataclasses.replace(cfg, quantize=dataclasses.replace(cfg.quantize, method="percentile")),
        ),
        "preprocessing": cache_key(
            "m" * 64,
            CalibrationSet(
                dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, mean=(0.5, 0.5, 0.5)))
            ),
            cfg,
        ),
    }
    # one calibration image's bytes change (same path): a new key
    first = calib.images[0].path
    saved = first.read_bytes()
    try:
        first.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
        changed["image-bytes"] = cache_key("m" * 64, CalibrationSet(cfg), cfg)
    finally:
        first.write_bytes(saved)
    _upgrade_backends(monkeypatch)
    changed["onnxruntime-version"] = cache_key("m" * 64, calib, cfg)
    assert base not in changed.values() and len(set(changed.values())) == len(changed)


@pytest.mark.slow
def test_calibration_cache_is_not_reused_after_a_backend_upgrade(calib_cfg, monkeypatch, tmp_path):
    from edgefpn.artifacts import sha256_file
    from edgefpn.calibration import calibrate

    cfg, run_dir, calib = calib_cfg
    model = run_dir / "model.onnx"
    sha = sha256_file(model)
    logs: list[str] = []
    first = calibrate(cfg, model, sha, calib, tmp_path, log=logs.append)
    again = calibrate(cfg, model, sha, calib, tmp_path, log=logs.append)
    assert not first.reused and again.reused and again.cache == first.cache  # the control: a real cache
    _upgrade_backends(monkeypatch)
    upgraded = calibrate(cfg, model, sha, calib, tmp_path, log=logs.append)
    assert not upgraded.reused and upgraded.cache != first.cache


def test_openvino_compiled_model_cache_key(tmp_path):
    pytest.importorskip("openvino", reason="needs the openvino extra")
    from edgefpn.backends import EngineSpec
    from edgefpn.backends.openvino import OpenVinoRunner

    xml, bin_ = tmp_path / "model.xml", tmp_path / "model.bin"
    xml.write_text("<net/>")
    bin_.write_bytes(b"\0" * 16)
    runner = OpenVinoRunner(EngineSpec("openvino-fp32", "openvino", "fp32", tmp_path), threads=2)
    config = runner.config()
    base = runner._cache_dir(xml, bin_, config, "2026.4.1")
    assert runner._cache_dir(xml, bin_, dict(config), "2026.4.1") == base
    keys = {
        "version": runner._cache_dir(xml, bin_, config, "2026.5.0"),
        "config": runner._cache_dir(xml, bin_, {**config, "INFERENCE_PRECISION_HINT": "bf16"}, "2026.4.1"),
    }
    bin_.write_bytes(b"\1" * 16)
    keys["weights"] = runner._cache_dir(xml, bin_, config, "2026.4.1")
    xml.write_text("<net version='11'/>")
    keys["graph"] = runner._cache_dir(xml, bin_, config, "2026.4.1")
    assert base not in keys.values() and len(set(keys.values())) == len(keys)


def test_tensorrt_timing_cache_key():
    s = TensorRTConfig()
    orin = DeviceInfo("Orin", "8.7", "12.6")
    base = timing_cache_key(orin, "10.3.0", ["FP16"], s)
    assert timing_cache_key(orin, "10.3.0", ["FP16"], s) == base
    keys = [
        timing_cache_key(orin, "10.4.0", ["FP16"], s),
        timing_cache_key(DeviceInfo("Orin", "8.6", "12.6"), "10.3.0", ["FP16"], s),
        timing_cache_key(DeviceInfo("A10", "8.7", "12.6"), "10.3.0", ["FP16"], s),
        timing_cache_key(orin, "10.3.0", ["INT8", "FP16"], s),
        timing_cache_key(orin, "10.3.0", ["FP16"], dataclasses.replace(s, dla_core=0)),
        timing_cache_key(orin, "10.3.0", ["FP16"], dataclasses.replace(s, hardware_compatible=True)),
    ]
    assert base not in keys and len(set(keys)) == len(keys)


class _Remeasured(Exception):
    pass


def test_check_report_is_redone_after_a_backend_upgrade(checked_run, tmp_path, monkeypatch):
    from edgefpn.pipeline import check

    overrides, src = checked_run
    run = copy_run(src, tmp_path / "run")
    cfg = load_config(None, overrides)

    def remeasure(*a, **k):
        raise _Remeasured

    monkeypatch.setattr(check, "evaluate", remeasure)
    assert check.run(cfg, run, progress=False).path == run / check.REPORT  # control: up to date, reused
    _upgrade_backends(monkeypatch)
    with pytest.raises(_Remeasured):
        check.run(cfg, run, progress=False)


def test_benchmark_is_redone_after_a_backend_upgrade(checked_run, tmp_path, monkeypatch):
    from edgefpn.pipeline import benchmark

    overrides, src = checked_run
    run = copy_run(src, tmp_path / "run")
    cfg = load_config(None, overrides)
    kwargs = {"progress": False, "iters": 2, "app_seconds": 0.0, "throughput_seconds": 0.1}
    benchmark.run(cfg, run, **kwargs)

    def remeasure(*a, **k):
        raise _Remeasured

    monkeypatch.setattr(benchmark, "open_runner", remeasure)
    assert benchmark.run(cfg, run, **kwargs).path == run / benchmark.ARTIFACT  # control: reused
    _upgrade_backends(monkeypatch)
    with pytest.raises(_Remeasured):
        benchmark.run(cfg, run, **kwargs)

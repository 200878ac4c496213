"""Stage `build` on the tiny run: engines with provenance manifests, skips recorded, up-to-date skipping."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgefpn.pipeline
from edgefpn.artifacts import read_manifest, sha256_file, sha256_path, up_to_date, write_manifest
from edgefpn.backends.tensorrt import unavailable_reason
from edgefpn.config import load_config
from edgefpn.errors import BackendUnavailable
from edgefpn.pipeline import build
from edgefpn.pipeline.check import ENGINE_FILES, discover_engines

pytest.importorskip("openvino", reason="needs the openvino extra: pip install 'edgefpn[openvino]'")
NO_TRT = unavailable_reason() is not None


def test_engine_paths_agree_with_check():
    # the raw engines (an -e2e twin's path is the e2e stage's: tests/e2e)
    rows = {
        (backend, precision): rel
        for name, backend, precision, rel in ENGINE_FILES
        if not name.endswith("-e2e")
    }
    for target in ("openvino", "tensorrt"):
        for precision in ("fp32", "fp16", "int8"):
            if (target, precision) in rows:
                assert build.engine_path(Path("R"), target, precision) == Path("R") / rows[target, precision]


def test_default_build_makes_openvino_and_records_skips(run_copy):
    overrides, run_dir = run_copy
    cfg = load_config(None, [*overrides, "quantize.enabled=false"])
    arts = build.run(cfg, run_dir, progress=False)
    assert [a.path for a in arts] == [run_dir / "openvino/fp32", run_dir / "openvino/fp16"]

    onnx_sha = read_manifest(run_dir / "model.onnx")["sha256"]
    for art, precision in zip(arts, ("fp32", "fp16"), strict=True):
        m = art.manifest
        assert m["sha256"] == sha256_path(art.path)  # the folder: model.xml and model.bin
        assert sorted(p.name for p in art.path.iterdir()) == ["model.bin", "model.xml"]
        assert m["source"] == {"path": "model.onnx", "sha256": onnx_sha} and m["inputs"] == {"onnx": onnx_sha}
        assert m["precision"] == precision and m["input"] == {
            "name": "images",
            "shape": [1, 3, 160, 160],
            "dtype": "float32",
        }
        assert m["settings"]["compress_to_fp16"] is (precision == "fp16")
        assert m["settings"]["inference_precision_hint"] == "f32"
        assert m["backend_version"] and m["lint"] == [] and len(m["outputs"]) == 15

    summary = json.loads((run_dir / "build.json").read_text())
    skipped = {s["name"]: s["reason"] for s in summary["skipped"]}
    assert "quantize.enabled is false" in skipped["openvino-int8"]
    if NO_TRT:
        assert "`tensorrt` Python package" in skipped["tensorrt-fp16"]
    # the Jetson path: the trtexec equivalent is written even where TensorRT is missing
    script = (run_dir / "tensorrt/fp16/trtexec.sh").read_text()
    assert "trtexec --onnx=../../model.onnx --saveEngine=model.engine" in script and "--fp16" in script
    assert summary["lint"]["model.onnx"]["errors"] == 0

    # check finds exactly these engines
    found = discover_engines(run_dir, ["openvino", "tensorrt"])
    assert [(e.name, e.path) for e in found] == [
        ("openvino-fp32", arts[0].path),
        ("openvino-fp16", arts[1].path),
    ]

    # up to date: nothing rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (run_dir / "openvino").rglob("*")}
    again = build.run(cfg, run_dir, progress=False)
    assert [a.manifest for a in again] == [a.manifest for a in arts]
    assert stamps == {p: p.stat().st_mtime_ns for p in (run_dir / "openvino").rglob("*")}

    # a changed ONNX (as a re-export would leave it: new bytes, valid export manifest) rebuilds
    onnx_path = run_dir / "model.onnx"
    proto = onnx.load(str(onnx_path))
    proto.doc_string = "changed"
    onnx.save(proto, str(onnx_path))
    old = read_manifest(onnx_path)
    write_manifest(
        onnx_path,
        stage="export",
        config_hash=old["config_hash"],
        inputs=old["inputs"],
        extra={k: v for k, v in old.items() if k in ("input", "outputs")},
    )
    (rebuilt,) = build.run(cfg, run_dir, targets=["openvino"], precisions=["fp32"], progress=False)
    assert rebuilt.manifest["inputs"]["onnx"] == sha256_path(onnx_path) != onnx_sha


@pytest.mark.skipif(not NO_TRT, reason="tensorrt is usable here")
def test_explicit_unavailable_target_raises_and_writes_nothing(run_copy):
    overrides, run_dir = run_copy
    before = sorted(run_dir.rglob("*"))
    cfg = load_config(None, overrides)
    with pytest.raises(BackendUnavailable) as info:
        build.run(cfg, run_dir, targets=["openvino", "tensorrt"], progress=False)
    assert "\n" not in str(info.value) and "pip install tensorrt" in str(info.value)
    assert sorted(run_dir.rglob("*")) == before


def _fake_quantize(run_dir: Path, monkeypatch, *, nncf_ir: bool):
    """Stand in for the quantize stage: a quick symmetric per-channel QDQ model.int8.onnx (+ NNCF-like IR)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgefpn.artifacts import write_manifest

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"images": rng.standard_normal((1, 3, 160, 160)).astype(np.float32)}])

        def get_next(self):
            return next(self.batches, None)

    def run(cfg, rd, *, force=False, progress=True):
        out = rd / "model.int8.onnx"
        quantize_static(
            str(rd / "model.onnx"),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
        art = write_manifest(out, stage="quantize", config_hash="fake", inputs={})
        if nncf_ir:
            from edgefpn.backends.openvino import onnx_to_openvino

            onnx_to_openvino(out, rd / "openvino/int8/model.xml", compress_to_fp16=False)
            # what the real stage records: the IR is taken by build only while these are current
            made_from = {"model": sha256_file(rd / "model.onnx"), "int8_qdq": art.sha256}
            write_manifest(rd / "openvino/int8", stage="quantize", config_hash="fake", inputs=made_from)
        return art

    fake = types.SimpleNamespace(run=run)
    monkeypatch.setitem(sys.modules, "edgefpn.pipeline.quantize", fake)
    # `from edgefpn.pipeline import quantize` reads the package attribute once the real module was imported
    monkeypatch.setattr(edgefpn.pipeline, "quantize", fake, raising=False)


def test_int8_from_qdq_onnx(run_copy, monkeypatch):
    overrides, run_dir = run_copy
    _fake_quantize(run_dir, monkeypatch, nncf_ir=False)
    cfg = load_config(None, [*overrides, "quantize.openvino=false"])
    (art,) = build.run(cfg, run_dir, targets=["openvino"], precisions=["int8"], progress=False)
    assert art.path == run_dir / "openvino/int8"
    assert art.manifest["stage"] == "build" and art.manifest["source"]["path"] == "model.int8.onnx"
    assert art.manifest["lint"] == []  # symmetric, per-channel weights, no int32 bias
    assert art.manifest["input"]["shape"] == [1, 3, 160, 160]


def test_int8_uses_the_quantize_stage_nncf_ir(run_copy, monkeypatch):
    overrides, run_dir = run_copy
    _fake_quantize(run_dir, monkeypatch, nncf_ir=True)
    cfg = load_config(None, overrides)
    (art,) = build.run(cfg, run_dir, targets=["openvino"], precisions=["int8"], progress=False)
    assert art.manifest["stage"] == "quantize"  # used as-is, not reconverted nor re-stamped
    made_from = {
        "model": sha256_file(run_dir / "model.onnx"),
        "int8_qdq": sha256_file(run_dir / "model.int8.onnx"),
    }
    assert up_to_date(art.path, config_hash="fake", inputs=made_from) is not None

"""Stage `quantize` on the tiny session run (copied: the session run is shared and read-only)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from edgefpn.artifacts import read_manifest, sha256_file
from edgefpn.calibration import CalibrationSet, calibrate, ranges
from edgefpn.config import load_config
from edgefpn.errors import DataError
from edgefpn.pipeline import quantize as stage
from tests.conftest import copy_run


def _copy_run(tiny_run, dst: Path, *extra: str):
    overrides, run_dir = tiny_run
    copy_run(run_dir, dst, ignore=shutil.ignore_patterns("cache", "*.int8.*", "*.fp16.*", "openvino"))
    cfg = load_config(None, [*overrides, f"run.out={dst}", *extra])
    return cfg, dst


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def quantized(tiny_run, tmp_path_factory):
    cfg, run_dir = _copy_run(tiny_run, tmp_path_factory.mktemp("q") / "run")
    art = stage.run(cfg, run_dir, progress=False)
    return cfg, run_dir, art


def test_stage_writes_int8_fp16_and_openvino_with_manifests(quantized) -> None:
    cfg, run_dir, art = quantized
    assert art.path == run_dir / "model.int8.onnx"
    acc = art.manifest["accuracy"]
    assert acc["val_images"] == 6 and acc["budget"] == cfg.quantize.max_map_drop
    assert art.manifest["calibration"]["images"] == 6 and not art.manifest["calibration"]["reused"]
    fp16 = read_manifest(run_dir / "model.fp16.onnx")
    assert fp16 is not None and fp16["ort_cpu_runs"] and fp16["output_dtypes"] == ["float32"]
    pytest.importorskip("nncf")
    assert (run_dir / "openvino" / "int8" / "model.xml").is_file()
    assert read_manifest(run_dir / "openvino" / "int8")["fake_quantize_ops"] > 0


def test_qdq_zero_points_are_int8_zero_and_weights_per_channel(quantized) -> None:
    _, run_dir, _ = quantized
    model = onnx.load(str(run_dir / "model.int8.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:
        zp = inits[n.input[2]]
        assert zp.data_type == onnx.TensorProto.INT8, n.name
        assert not numpy_helper.to_array(zp).any(), n.name
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv in convs:
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear", conv.name
        weight = numpy_helper.to_array(inits[dq.input[0]])
        scale = numpy_helper.to_array(inits[dq.input[1]])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        assert weight.dtype == np.int8 and axis == 0 and scale.shape == (weight.shape[0],), conv.name
        if len(conv.input) > 2:  # biases stay float (TensorRT quantizes no bias)
            assert conv.input[2] in inits and inits[conv.input[2]].data_type == onnx.TensorProto.FLOAT
    # the head tensors leave the graph in float, not through a DequantizeLinear
    for out in model.graph.output:
        assert producer[out.name].op_type not in ("DequantizeLinear", "QuantizeLinear"), out.name


def test_ort_flavour_is_u8s8_and_fuses_into_qlinear_ops(quantized) -> None:
    """model.int8.ort.onnx (the onnxruntime-int8 engine): uint8 activations, int8 per-channel weights, int32
    biases, no Q -> DQ between float nodes; ORT turns its convolutions into QLinearConv at load time."""
    import onnxruntime as ort

    from edgefpn.quantize.ort_cpu import check_qdq_ort

    cfg, run_dir, sym = quantized
    path = run_dir / "model.int8.ort.onnx"
    manifest = read_manifest(path)
    assert manifest["flavour"] == "u8s8" and manifest["scheme"]["activations"].startswith("uint8")
    assert manifest["accuracy"]["reference_map"] == sym.manifest["accuracy"]["reference_map"]
    assert manifest["calibration"]["cache"] == sym.manifest["calibration"]["cache"]  # the same ranges
    model = onnx.load(str(path))
    assert check_qdq_ort(model, manifest["exclude_nodes"]) == []
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    acts = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert acts and all(inits[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in acts)
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        w_dq, b_dq = producer[conv.input[1]], producer[conv.input[2]]
        weight = numpy_helper.to_array(inits[w_dq.input[0]])
        assert weight.dtype == np.int8 and numpy_helper.to_array(inits[w_dq.input[1]]).shape == (
            weight.shape[0],
        )
        assert np.abs(weight).max() <= 64  # 7-bit range: no int16 saturation in the AVX2 kernels
        assert inits[b_dq.input[0]].data_type == onnx.TensorProto.INT32, conv.name
    for out in model.graph.output:
        assert producer[out.name].op_type not in ("DequantizeLinear", "QuantizeLinear"), out.name
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(run_dir / "ort-optimized.onnx")
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    fused = onnx.load(opts.optimized_model_filepath)
    ops = [n.op_type for n in fused.graph.node]
    # every quantized Conv is fused; the head's output convs stay float (their outputs are float)
    assert ops.count("QLinearConv") >= len([c for c in model.graph.node if c.op_type == "Conv"]) - 15
    # the symmetric TensorRT model is a different file, still symmetric int8
    assert sym.path.name == "model.int8.onnx" and sym.manifest["flavour"] == "symmetric"


def test_second_run_is_up_to_date_and_does_not_calibrate(quantized, monkeypatch) -> None:
    cfg, run_dir, art = quantized
    monkeypatch.setattr(ranges, "_collect", lambda *a, **k: pytest.fail("calibrated again"))
    again = stage.run(cfg, run_dir, progress=False)
    assert again.manifest["sha256"] == art.manifest["sha256"]


def test_changed_weight_changes_the_key_and_recalibrates(quantized, tmp_path: Path, monkeypatch) -> None:
    cfg, run_dir, _ = quantized
    calib = CalibrationSet(cfg)
    model_path = run_dir / "model.onnx"
    passes = []
    real = ranges._collect
    monkeypatch.setattr(ranges, "_collect", lambda *a, **k: passes.append(1) or real(*a, **k))
    cache_dir = run_dir / "cache"
    same = calibrate(cfg, model_path, sha256_file(model_path), calib, cache_dir, log=lambda m: None)
    assert same.reused and passes == []

    model = onnx.load(str(model_path))
    w = next(t for t in model.graph.initializer if len(t.dims) == 4)
    arr = numpy_helper.to_array(w).copy()
    arr.flat[0] += 0.5
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    changed = tmp_path / "model.onnx"
    onnx.save(model, str(changed))
    new = calibrate(cfg, changed, sha256_file(changed), calib, cache_dir, log=lambda m: None)
    assert new.key != same.key and new.cache != same.cache
    assert not new.reused and passes == [1] and new.cache.is_file()


def test_sensitivity_records_each_candidate_and_what_stays_float(
    tiny_run, tmp_path: Path, monkeypatch
) -> None:
    from edgefpn.quantize import qdq

    # A negative budget can never be met: the whole search runs and the report says so honestly.
    cfg, run_dir = _copy_run(
        tiny_run,
        tmp_path / "run",
        "quantize.max_map_drop=-1",
        "quantize.fp16=false",
        "quantize.openvino=false",
    )
    real = qdq.node_groups
    monkeypatch.setattr(
        qdq,
        "node_groups",
        lambda m: {k: v for k, v in real(m).items() if k in ("head-cls/p3", "backbone/stem")},
    )
    art = stage.run(cfg, run_dir, progress=False)
    acc = art.manifest["accuracy"]
    assert acc["budget_met"] is False
    sens = acc["sensitivity"]
    assert [c["group"] for c in sens["candidates"]] == ["backbone/stem", "head-cls/p3"]
    assert all({"map", "recovered", "nodes"} <= set(c) for c in sens["candidates"])
    assert set(acc["kept_float_groups"]) <= {"backbone/stem", "head-cls/p3"}
    # the ORT flavour runs the same fallback search on its own model
    ort_acc = read_manifest(run_dir / "model.int8.ort.onnx")["accuracy"]
    assert [c["group"] for c in ort_acc["sensitivity"]["candidates"]] == ["backbone/stem", "head-cls/p3"]


def test_disabled_stage_is_skipped(tiny_run, tmp_path: Path) -> None:
    cfg, run_dir = _copy_run(tiny_run, tmp_path / "run", "quantize.enabled=false")
    before = _listing(run_dir)
    assert stage.run(cfg, run_dir, progress=False) is None
    assert _listing(run_dir) == before


@pytest.mark.parametrize("problem", ["empty", "unreadable", "overlap"])
def test_bad_calibration_input_is_one_line_and_writes_nothing(tiny_run, tmp_path: Path, problem: str) -> None:
    overrides, _ = tiny_run
    data_root = Path(load_config(None, overrides).data.root)
    folder = tmp_path / "calib"
    folder.mkdir()
    if problem == "empty":
        want = "no images"
    elif problem == "unreadable":
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"ok{i}.png")
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
        want = "broken.jpg"
    else:
        val_image = sorted((data_root / "images").glob("val*"))[0]
        shutil.copy(val_image, folder / "innocent.jpg")
        want = "innocent.jpg: calibration image has the same content as val image"
    cfg, run_dir = _copy_run(tiny_run, tmp_path / "run", f"quantize.calib_folder={folder}")
    before = _listing(run_dir)
    with pytest.raises(DataError) as err:
        stage.run(cfg, run_dir, progress=False)
    assert want in str(err.value) and "\n" not in str(err.value)
    assert _listing(run_dir) == before


def test_openvino_ranking_follows_the_measured_sensitivity():
    from edgefpn.quantize.nncf_loop import openvino_ranking

    groups = {"backbone/layer1": ["a"], "fpn/p3": ["b"], "head-reg/p3": ["c"], "head-cls/p4": ["d"]}
    accuracy = {
        "kept_float_groups": ["head-reg/p3"],
        "sensitivity": {
            "candidates": [
                {"group": "backbone/layer1", "recovered": 0.16},
                {"group": "fpn/p3", "recovered": 0.21},
                {"group": "head-reg/p3", "recovered": 0.32},  # already kept in float by the QDQ loop
                {"group": "head-cls/p4", "recovered": -0.05},  # measured no gain: never tried
            ]
        },
    }
    assert openvino_ranking(accuracy, groups) == ["fpn/p3", "backbone/layer1"]
    # no QDQ sensitivity run (QDQ was within budget at once): heads first, then FPN, then backbone
    assert openvino_ranking({}, groups) == ["head-cls/p4", "head-reg/p3", "fpn/p3", "backbone/layer1"]

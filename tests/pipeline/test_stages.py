"""The stage contract on a tiny run: artifacts + manifests, skipping, rebuilding, the report."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgefpn.artifacts import manifest_path, read_manifest, sha256_file
from edgefpn.config import load_config
from edgefpn.errors import CheckFailed
from edgefpn.pipeline import check, export, train
from edgefpn.report.check_md import render_markdown
from tests.conftest import copy_run


def test_export_is_static_with_15_named_outputs(tiny_run):
    _, run_dir = tiny_run
    model = onnx.load(str(run_dir / "model.onnx"))
    names = [o.name for o in model.graph.output]
    assert names == [f"{b}_p{k}" for b in ("cls", "box", "ctr") for k in range(3, 8)]
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") and d.dim_value > 0 for d in dims), value.name
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["edgefpn.input_size"]) == [160, 160]
    assert json.loads(props["edgefpn.mean"]) == [0.485, 0.456, 0.406]
    assert "edgefpn.class_names" in props and "edgefpn.postprocess" in props
    m = read_manifest(run_dir / "model.onnx")
    assert m["inputs"]["model"] == sha256_file(run_dir / "model.pt")
    assert max(m["verify_max_abs_error"].values()) <= 1e-4


def test_up_to_date_stages_are_skipped_and_changes_rebuild(tiny_run, tmp_path):
    overrides, run_dir = tiny_run
    cfg = load_config(None, overrides)
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "model.pt", run_dir / "model.onnx")}
    export.run(cfg, run_dir, progress=False)  # everything up to date: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # a new export setting rebuilds the ONNX but not the model, in a copy of the run
    copy = copy_run(run_dir, tmp_path / "run")
    cfg2 = load_config(None, [*overrides, "export.simplify=false"])
    t_model = (copy / "model.pt").stat().st_mtime_ns
    export.run(cfg2, copy, progress=False)
    assert (copy / "model.pt").stat().st_mtime_ns == t_model
    assert (
        read_manifest(copy / "model.onnx")["config_hash"]
        != read_manifest(run_dir / "model.onnx")["config_hash"]
    )


def test_check_writes_report_and_gates(run_copy):
    overrides, copy = run_copy
    cfg = load_config(None, [*overrides, "deploy.score_thresh=0.3"])
    art = check.run(cfg, copy, progress=False)
    report = json.loads(art.path.read_text())
    assert report["reference"]["engine"] == "torch-fp32"
    # end to end at the deployment threshold, and at mAP's evaluation threshold beside it
    for e in report["engines"]:
        deploy, evaluation = e["latency"]["end_to_end"], e["latency"]["end_to_end_eval"]
        assert deploy["score_thresh"] == 0.3 and evaluation["score_thresh"] == cfg.postprocess.score_thresh
        assert deploy["detections_per_image"] <= evaluation["detections_per_image"]
        assert deploy["samples"] == evaluation["samples"] == cfg.check.latency_iters
    assert report["config"]["deploy_score_thresh"] == 0.3
    assert "| e2e p50 ms (score > 0.30) | e2e / model |" in (copy / "report.md").read_text()
    ort = next(e for e in report["engines"] if e["name"] == "onnxruntime-fp32")
    for key in ("name", "backend", "precision", "map", "map50", "map_delta", "latency_ms", "fps", "levels"):
        assert key in ort
    assert set(ort["levels"]) == {"p3", "p4", "p5", "p6", "p7"}
    assert ort["levels"]["p3"]["cls"]["cosine"] >= 0.99999
    assert abs(ort["map_delta"]) <= 0.05
    assert {"p50", "p90"} <= set(ort["latency_ms"])
    assert (copy / "report.md").read_text().startswith("# edgefpn check report")
    # an impossible gate fails the check loudly and names the engine
    strict = load_config(None, [*overrides, "check.min_cosine.fp32=1.1"])
    with pytest.raises(CheckFailed, match="onnxruntime-fp32: cls_p3: cosine"):
        check.run(strict, copy, progress=False)
    assert "GATES FAILED" in render_markdown(json.loads((copy / "report.json").read_text()))


def test_check_rewrites_a_deleted_report(run_copy):
    overrides, copy = run_copy
    cfg = load_config(None, [*overrides, *_ORT_ONLY])
    check.run(cfg, copy, progress=False)
    for deleted in ("report.html", "report.md"):
        (copy / deleted).unlink()
        check.run(cfg, copy, progress=False)  # not "up to date": an output it writes is missing
        assert (copy / deleted).is_file()
        assert read_manifest(copy / "report.json")["side_outputs"][deleted] == sha256_file(copy / deleted)
    mtime = (copy / "report.json").stat().st_mtime_ns
    check.run(cfg, copy, progress=False)  # now complete: skipped
    assert (copy / "report.json").stat().st_mtime_ns == mtime


# the cheapest check: no quantized models, no engines to build, ONNX Runtime fp32 only
_ORT_ONLY = ["quantize.enabled=false", "build.targets=[]", "check.backends=[onnxruntime]"]


def test_train_resume_state_is_not_left_behind(tiny_run):
    _, run_dir = tiny_run
    assert not (run_dir / train.RESUME).exists()
    assert manifest_path(run_dir / "model.pt").exists()
    meta = read_manifest(run_dir / "model.pt")["meta"]
    assert meta["num_classes"] == len(meta["class_names"]) >= 6
    assert Path(meta["class_names"][0])  # plain strings

"""The end-to-end contract through the stages: export -> build -> check -> package -> runtime, on the tiny
run."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgefpn.artifacts import sha256_path
from edgefpn.config import load_config
from edgefpn.errors import CheckFailed
from tests.conftest import copy_run

# ONNX Runtime FP32 only, three val images: the contract, not the speed (OpenVINO's grafted IR is
# compared with the numpy decoder in test_graph.py; check handles it as any other backend)
E2E = (
    "export.input=uint8",
    "export.nms=true",
    "quantize.enabled=false",
    "build.targets=[]",
    "check.backends=[onnxruntime]",
    "check.max_images=3",
)
IN_GRAPH = ("onnxruntime-fp32-e2e",)


def test_check_passes_in_graph_engines_and_the_runtime_follows_their_contract(
    tiny_run, tmp_path, monkeypatch
):
    from edgefpn import inference
    from edgefpn.data.preprocess import load_image
    from edgefpn.pipeline import check, package
    from edgefpn.runtime import BundleSession

    overrides, src = tiny_run
    run_dir = copy_run(src, tmp_path / "run")
    cfg = load_config(None, [*overrides, *E2E])
    check.run(cfg, run_dir, progress=False)
    assert sha256_path(run_dir / "model.onnx") == sha256_path(
        src / "model.onnx"
    )  # the raw graph is untouched
    report = json.loads((run_dir / "report.json").read_text())
    engines = {e["name"]: e for e in report["engines"]}
    for name in IN_GRAPH:
        e = engines[name]
        assert e["contract"] == {"input": "uint8", "output": "detections"} and e["gates"]["passed"], e[
            "gates"
        ]
        twin = e["twin"]
        assert twin["engine"] == name.removesuffix("-e2e") and twin["n_ref"] > 0
        assert twin["matched_fraction"] == 1.0 and twin["mean_iou"] > 0.999 and twin["max_score_error"] < 1e-5
        assert e["map"] == pytest.approx(engines[twin["engine"]]["map"], abs=0.05)
    assert "Engine contracts" in (run_dir / "report.md").read_text()

    package.run(cfg, run_dir, engines=["onnxruntime-fp32-e2e", "onnxruntime-fp32"], progress=False)
    image = load_image(sorted((src.parent / "data" / "images").glob("val_*"))[0])
    with BundleSession(run_dir / "bundle.tar", engine="onnxruntime-fp32-e2e", threads=1) as s:
        assert (s.prepost.input, s.prepost.contract) == ("uint8", "detections")

        def no_decode(arch):  # an engine that returns detections is never decoded by numpy
            raise AssertionError("numpy decode called for an in-graph NMS engine")

        with monkeypatch.context() as m:
            m.setattr(inference, "decoder_for", no_decode)
            in_graph = s.detect_image(image)
    with BundleSession(run_dir / "bundle.tar", engine="onnxruntime-fp32", threads=1) as r:
        assert (r.prepost.input, r.prepost.contract) == ("float", "raw")
        raw = r.detect_image(image)
    assert len(in_graph) == len(raw) > 0
    assert (in_graph.labels == raw.labels).all() and abs(in_graph.scores - raw.scores).max() < 1e-5
    assert abs(in_graph.boxes - raw.boxes).max() < 1e-2


def test_check_fails_loudly_when_an_in_graph_engine_disagrees(tiny_run, tmp_path, monkeypatch):
    from edgefpn.e2e import graph
    from edgefpn.pipeline import check
    from edgefpn.pipeline import e2e as e2e_stage

    overrides, src = tiny_run
    run_dir = copy_run(src, tmp_path / "run")
    cfg = load_config(None, [*overrides, *E2E[:-1], "check.max_images=2"])
    real = e2e_stage.postprocess_params
    # a broken tail: it keeps 10 detections per image where the numpy decoder keeps up to 100
    monkeypatch.setattr(
        e2e_stage, "postprocess_params", lambda c, a: dataclasses.replace(real(c, a), detections_per_img=10)
    )
    monkeypatch.setattr(graph, "GRAPH_VERSION", graph.GRAPH_VERSION + 1000)
    with pytest.raises(
        CheckFailed, match=r"onnxruntime-fp32-e2e: detections vs onnxruntime-fp32: matched fraction"
    ):
        check.run(cfg, run_dir, progress=False)
    report = json.loads((run_dir / "report.json").read_text())
    (failed,) = [e for e in report["engines"] if not e["gates"]["passed"]]
    assert failed["name"] == "onnxruntime-fp32-e2e" and failed["twin"]["matched_fraction"] < 0.99

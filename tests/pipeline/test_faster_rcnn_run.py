"""`edgefpn run` for Faster R-CNN on the tiny config: data -> train -> export -> quantize -> build ->
check."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgefpn.artifacts import read_manifest
from edgefpn.config import load_config
from edgefpn.pipeline import check
from tests.conftest import tiny_overrides

FASTER_RCNN = [
    "model.arch=faster_rcnn",
    "model.backbone_width=16",
    "model.representation_size=64",
    "model.rpn.post_nms_top_n=100",
]


@pytest.mark.slow
def test_faster_rcnn_tiny_run_completes_and_fp32_engines_agree(tmp_path: Path) -> None:
    cfg = load_config(None, [*tiny_overrides(tmp_path), *FASTER_RCNN])
    run_dir = Path(cfg.run.out)
    report = json.loads(check.run(cfg, run_dir, progress=False).path.read_text())

    model = onnx.load(str(run_dir / "model.onnx"))
    outputs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert outputs["proposals"] == [1, 100, 4] and outputs["roi_cls"] == [1, 100, 8]  # 7 classes + background
    assert all(all(d > 0 for d in dims) for dims in outputs.values())  # static
    assert {"NonMaxSuppression", "RoiAlign", "TopK"} <= {n.op_type for n in model.graph.node}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["edgefpn.arch"] == "faster_rcnn" and json.loads(props["edgefpn.levels"])[0] == "p2"
    # INT8 QDQ left the box / NMS / RoI path in float
    assert read_manifest(run_dir / "model.int8.onnx")["op_types"] == ["Conv", "Gemm", "MatMul"]

    engines = {e["name"]: e for e in report["engines"]}
    assert {"onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8", "openvino-fp32"} <= set(engines)
    for name in ("onnxruntime-fp32", "openvino-fp32"):
        fp32 = engines[name]
        assert abs(fp32["map_delta"]) <= 0.05
        assert set(fp32["levels"]) == {"p2", "p3", "p4", "p5", "p6"}
        assert min(b["cosine"] for lvl in fp32["levels"].values() for b in lvl.values()) >= 0.99999
        assert fp32["outputs"]["roi_cls"]["cosine"] >= 0.9999  # same proposals in the same (anchor) order
        assert fp32["detections"]["matched_fraction"] >= 0.99
    assert all(e["gates"]["passed"] for e in report["engines"]), [
        e["gates"]["failed"] for e in report["engines"]
    ]

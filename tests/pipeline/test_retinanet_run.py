"""`edgefpn run` end to end for RetinaNet on the tiny config: every stage, ONNX Runtime FP32 within 0.05
AP."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgefpn.artifacts import read_manifest
from edgefpn.config import load_config
from edgefpn.pipeline import run_all
from tests.conftest import tiny_overrides


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["retinanet"])
def test_run_completes_and_onnx_matches_pytorch(arch: str, tmp_path: Path) -> None:
    cfg = load_config(None, [*tiny_overrides(tmp_path), f"model.arch={arch}"])
    run_dir = Path(cfg.run.out)
    run_all(cfg, run_dir, progress=False)

    model = onnx.load(str(run_dir / "model.onnx"))
    assert [o.name for o in model.graph.output] == [f"{b}_p{k}" for b in ("cls", "box") for k in range(3, 8)]
    for value in [*model.graph.input, *model.graph.output]:
        assert all(d.HasField("dim_value") and d.dim_value > 0 for d in value.type.tensor_type.shape.dim)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["edgefpn.arch"] == arch
    assert read_manifest(run_dir / "model.pt")["meta"]["arch"] == arch

    report = json.loads((run_dir / "report.json").read_text())
    engines = {e["name"]: e for e in report["engines"]}
    ort = engines["onnxruntime-fp32"]
    assert abs(ort["map_delta"]) <= 0.05
    assert set(ort["levels"]) == {"p3", "p4", "p5", "p6", "p7"} and set(ort["levels"]["p3"]) == {"cls", "box"}
    # every quantized / built engine either exists and passed check, or its stage recorded why not
    for name in ("onnxruntime-int8", "onnxruntime-fp16", "openvino-fp32", "openvino-int8"):
        assert name in engines, sorted(engines)
        assert engines[name]["gates"]["passed"], engines[name]["gates"]

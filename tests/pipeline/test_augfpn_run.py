"""`edgefpn run` with model.neck=augfpn on the tiny config: trains, exports static, ORT FP32 agrees."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgefpn.config import load_config
from edgefpn.pipeline import run_all
from tests.conftest import tiny_overrides

ARCHS = ["fcos"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_augfpn_run_completes_and_onnxruntime_matches_pytorch(arch, tmp_path) -> None:
    overrides = [
        *tiny_overrides(tmp_path),
        f"model.arch={arch}",
        "model.neck=augfpn",
        "quantize.enabled=false",
        "build.targets=[]",
        "check.backends=[onnxruntime]",
    ]
    cfg = load_config(None, overrides)
    run_dir = Path(cfg.run.out)
    run_all(cfg, run_dir, progress=False)

    report = json.loads((run_dir / "report.json").read_text())
    ort = next(e for e in report["engines"] if e["name"] == "onnxruntime-fp32")
    assert ort["gates"]["passed"] and abs(ort["map_delta"]) <= 0.05
    model = onnx.load(str(run_dir / "model.onnx"))
    for value in [*model.graph.input, *model.graph.output]:
        assert all(d.HasField("dim_value") and d.dim_value > 0 for d in value.type.tensor_type.shape.dim)
    assert any(n.op_type == "MatMul" and "/rfa/" in n.name for n in model.graph.node)  # RFA is in the graph
    manifest = json.loads((run_dir / "model.pt.manifest.json").read_text())
    assert manifest["meta"]["build"]["neck"] == "augfpn"

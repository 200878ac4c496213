"""An engine that outputs NaN or Inf fails the check stage, which names the engine,
the output and the level (in the one error line and in report.json), and exits 4."""

from __future__ import annotations

import json

import numpy as np

from edgefpn.backends.onnxruntime import OnnxRuntimeRunner
from tests.conftest import copy_run
from tests.faults.conftest import CHECK_ONLY_ORT
from tests.security.harness import cli, refused, tiny_sets

POISON = {"cls_p5": (np.nan, 3), "box_p3": (np.inf, 1), "ctr_p7": (-np.inf, 2)}


def test_nonfinite_outputs_fail_the_engine_naming_output_and_level(checked_run, tmp_path, monkeypatch):
    overrides, src = checked_run
    run = copy_run(src, tmp_path / "run")
    real_infer = OnnxRuntimeRunner.infer

    def poisoned(self, feed):
        out = real_infer(self, feed)
        for output, (value, count) in POISON.items():
            out[output].reshape(-1)[:count] = value  # in the engine's own output, as a broken kernel would
        return out

    monkeypatch.setattr(OnnxRuntimeRunner, "infer", poisoned)
    root = next(o for o in overrides if o.startswith("data.root=")).partition("=")[2]
    res = cli("check", *tiny_sets(*CHECK_ONLY_ORT, f"data.root={root}"), "--out", run, "--force", "--quiet")
    images = json.loads((run / "report.json").read_text())["dataset"]["images"]
    line = refused(res, names=[run / "report.json", "onnxruntime-fp32"], code=4, problem=r"gate\(s\) failed")
    engine = next(
        e for e in json.loads((run / "report.json").read_text())["engines"] if e["name"] == "onnxruntime-fp32"
    )
    assert not engine["gates"]["passed"]
    for output, (_, count) in POISON.items():
        branch, level = output.split("_")
        assert f"onnxruntime-fp32: {output}: {count * images} NaN/Inf values (level {level})" in line
        assert engine["levels"][level][branch]["nonfinite"] == count * images
        assert np.isfinite(engine["levels"][level][branch]["cosine"])  # the rest of the report stays valid
    assert np.isfinite(engine["map"])

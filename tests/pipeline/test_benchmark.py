"""`edgefpn benchmark` on the tiny run: every engine timed, benchmark_app cross-check, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgefpn.benchmarking.benchmark_app import parse_benchmark_app

APP_LOG = """
[Step 11/11] Dumping statistics report
[ INFO ] Execution Devices:['CPU']
[ INFO ] Count:            46 iterations
[ INFO ] Duration:         2051.83 ms
[ INFO ] Latency:
[ INFO ]    Median:        47.11 ms
[ INFO ]    Average:       44.40 ms
[ INFO ]    Min:           14.10 ms
[ INFO ]    Max:           151.09 ms
[ INFO ] Throughput:   22.42 FPS
"""


def test_parse_benchmark_app():
    assert parse_benchmark_app(APP_LOG) == {
        "median_ms": 47.11,
        "average_ms": 44.40,
        "min_ms": 14.10,
        "max_ms": 151.09,
        "fps": 22.42,
        "count": 46.0,
    }
    assert parse_benchmark_app("[ ERROR ] nothing") == {}


_SCRIPT = """
import json, sys
from pathlib import Path
from edgefpn.config import load_config
from edgefpn.pipeline import benchmark
cfg = load_config(None, json.loads(sys.argv[1]))
benchmark.run(cfg, Path(sys.argv[2]), progress=False, iters=3, app_seconds=2, app_rounds=2,
              throughput_seconds=0.2, stream_frames=1)
assert "torch" not in sys.modules, "the benchmark path imported torch"
"""


def test_benchmark_every_engine_without_torch(run_copy, tmp_path):
    pytest.importorskip("openvino", reason="needs the openvino extra: pip install 'edgefpn[openvino]'")
    from edgefpn.config import load_config
    from edgefpn.pipeline import build

    overrides, run_dir = run_copy
    cfg = load_config(None, [*overrides, "quantize.enabled=false"])
    build.run(cfg, run_dir, targets=("openvino",), precisions=("fp32",), progress=False)
    # no dataset on disk: the synthetic input is used
    args = [*overrides, "quantize.enabled=false", f"data.root={tmp_path / 'absent'}"]
    subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(args), str(run_dir)], check=True, timeout=300)

    report = json.loads((run_dir / "benchmark.json").read_text())
    assert report["input"]["source"].startswith("synthetic") and report["input"]["shape"] == [1, 3, 160, 160]
    rows = {r["name"]: r for r in report["engines"]}
    assert set(rows) == {"onnxruntime-fp32", "openvino-fp32"}
    assert set(report["definitions"]) == {"single_stream", "streaming", "offline"}
    for r in rows.values():
        ss, off = r["scenarios"]["single_stream"], r["scenarios"]["offline"]
        assert 0 < ss["model_only_ms"]["p50"] <= ss["model_only_ms"]["p99"] and ss["fps"] > 0
        assert "end_to_end_ms" not in ss  # no dataset on disk: model-only only
        # every FPS with its conditions: the run's knobs and the machine facts (None when unreadable)
        assert (ss["conditions"]["batch"], ss["conditions"]["requests"], ss["conditions"]["threads"]) == (
            1,
            1,
            2,
        )
        assert {"cpu_model", "governor", "cpu_mhz", "nvpmodel", "jetson_clocks", "power_mw"} <= set(
            ss["conditions"]
        )
        assert off["fps"] == max(p["fps"] for p in off["sweep"]) and off["conditions"]["requests"] >= 1
        assert all(p["conditions"]["batch"] == 1 and p["fps"] > 0 for p in off["sweep"])
        assert "skipped" in r["scenarios"]["streaming"]  # no val images to make the video from
    ov = rows["openvino-fp32"]
    # the OpenVINO sweep: the plugin's own choice, then explicit (streams, requests)
    assert {
        (p["conditions"]["streams"], p["conditions"]["requests"]) for p in ov["scenarios"]["offline"]["sweep"]
    } >= {(1, 1), (1, 2), (2, 2), (2, 4)}
    app = ov["scenarios"]["single_stream"]["benchmark_app"]
    assert "skipped" not in app, app
    assert app["median_ms"] > 0 and app["ours_over_app_p50"] > 0
    # interleaved: 2 rounds of (3 of our calls, then benchmark_app for 1 s) on the same input tensor
    assert ov["scenarios"]["single_stream"]["model_only_ms"]["samples"] == 6
    assert rows["onnxruntime-fp32"]["scenarios"]["single_stream"]["model_only_ms"]["samples"] == 3
    assert len(app["rounds"]) == 2 and all(r["median_ms"] > 0 and r["ours_p50_ms"] > 0 for r in app["rounds"])
    assert app["median_ms"] == pytest.approx(sum(r["median_ms"] for r in app["rounds"]) / 2, abs=1e-3)
    ratios = sorted(r["ours_p50_ms"] / r["median_ms"] for r in app["rounds"])
    assert app["ours_over_app_p50"] == pytest.approx(sum(ratios) / 2, abs=1e-3)
    assert "-i INPUT.npy" in app["command"] and "-t 1" in app["command"]
    assert "-infer_precision f32" in app["command"] and app["load_config"] == {
        "CPU": {"INFERENCE_NUM_THREADS": 2}
    }
    # offline against benchmark_app's async mode at our best point: same streams and requests
    best, asy = ov["scenarios"]["offline"]["conditions"], ov["scenarios"]["offline"]["benchmark_app"]
    assert "skipped" not in asy, asy
    assert asy["fps"] > 0 and asy["ours_fps"] > 0 and len(asy["rounds"]) == 2
    assert f"-nireq {best['requests']}" in asy["command"] and "-api async" in asy["command"]
    assert asy["load_config"]["CPU"]["NUM_STREAMS"] == best["streams"]
    md = (run_dir / "benchmark.md").read_text()
    assert md.startswith("# edgefpn benchmark") and "| openvino-fp32 |" in md and "benchmark_app" in md
    assert "## What each FPS means" in md and "**offline**" in md and "b1 s1 r1 t2" in md


def test_benchmark_rewrites_a_deleted_markdown(run_copy):
    from edgefpn.artifacts import read_manifest
    from edgefpn.config import load_config
    from edgefpn.pipeline import benchmark

    overrides, run_dir = run_copy
    cfg = load_config(None, [*overrides, "check.backends=[onnxruntime]"])

    def bench():
        return benchmark.run(
            cfg, run_dir, progress=False, iters=2, app_seconds=0, throughput_seconds=0.1, stream_frames=1
        )

    bench()
    # the streaming scenario on the val video (6 tiny val images), at the deploy and eval thresholds
    row = json.loads((run_dir / "benchmark.json").read_text())["engines"][0]
    streaming = row["scenarios"]["streaming"]
    for name in ("deploy", "eval"):
        r = streaming[name]
        assert r["frames"] == 6 and r["dropped"] == 0 and r["fps"] > 0
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        knobs = {k: r["conditions"][k] for k in ("threads", "streams", "requests", "batch")}
        assert knobs == {"threads": cfg.run.threads, "streams": 1, "requests": 2, "batch": 1}
        assert "cpu_model" in r["conditions"]  # and the machine facts (run_conditions)
    assert streaming["eval"]["score_thresh"] == cfg.postprocess.score_thresh
    assert "streaming FPS (deploy / eval)" in (run_dir / "benchmark.md").read_text()
    (run_dir / "benchmark.md").unlink()
    bench()  # not "up to date": benchmark.md is missing
    assert (run_dir / "benchmark.md").read_text().startswith("# edgefpn benchmark")
    assert "benchmark.md" in read_manifest(run_dir / "benchmark.json")["side_outputs"]

"""Driver for OpenVINO's ``benchmark_app``: the cross-check of our ``single_stream`` and ``offline`` figures.

Latency mode mirrors our runner (latency hint, ``INFERENCE_NUM_THREADS``, f32 inference precision, f32
input, sync API); async mode mirrors our ``offline`` point (THROUGHPUT hint, the same streams, requests
and threads, async API). Both read the very input tensor we time (``-i input.npy``): benchmark_app's
default is uniform noise in [0, 255], far outside a normalised image's range.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgefpn.backends.base import INPUT_NAME, EngineSpec

__all__ = ["APP_PATTERNS", "benchmark_app", "parse_benchmark_app"]

APP_PATTERNS = {
    "median_ms": r"Median:\s+([\d.]+)\s*ms",
    "average_ms": r"Average:\s+([\d.]+)\s*ms",
    "min_ms": r"Min:\s+([\d.]+)\s*ms",
    "max_ms": r"Max:\s+([\d.]+)\s*ms",
    "fps": r"Throughput:\s+([\d.]+)\s*FPS",
    "count": r"Count:\s+(\d+)\s+iterations",
}


def parse_benchmark_app(text: str) -> dict[str, float]:
    """The latency statistics and throughput of ``benchmark_app``'s log (keys that were found)."""
    found = {}
    for key, pattern in APP_PATTERNS.items():
        if m := re.search(pattern, text):
            found[key] = float(m.group(1))
    return found


def _exe() -> str | None:
    beside = Path(sys.executable).parent / "benchmark_app"
    return str(beside) if beside.is_file() else shutil.which("benchmark_app")


def benchmark_app(
    spec: EngineSpec,
    threads: int,
    seconds: int,
    input_npy: Path,
    *,
    mode: str = "latency",
    streams: int | None = None,
    requests: int | None = None,
) -> dict[str, Any]:
    """Run benchmark_app on ``spec`` for ``seconds``; its statistics, the command, or ``skipped`` with why.

    ``mode="latency"``: sync API, latency hint. ``mode="async"``: async API, THROUGHPUT hint, ``streams``
    (``-nstreams``) and ``requests`` (``-nireq``) as our offline point ran them. Its ``fps`` counts
    images (inferences x batch), as ours does: ``-layout`` tells it which dimension is the batch.
    """
    from edgefpn.backends.openvino import ir_xml

    exe = _exe()
    if exe is None:
        return {"skipped": "benchmark_app not found (it ships with the openvino package)"}
    # benchmark_app rejects -nthreads together with a hint, so the thread count goes in -load_config;
    # -ip f32 stops it from feeding u8 (it treats a 3-channel NCHW input as an image by default)
    plugin_config: dict[str, dict[str, Any]] = {"CPU": {"INFERENCE_NUM_THREADS": threads}}
    args = [
        "-m",
        str(ir_xml(spec.path)),
        "-d",
        "CPU",
        "-load_config",
        "CONFIG",
        "-t",
        str(seconds),
        "-infer_precision",
        "f32",
        "-ip",
        "f32",
        "-i",
        "INPUT.npy",
    ]
    if mode == "latency":
        args += ["-hint", "latency", "-api", "sync"]
    else:
        args += ["-hint", "throughput", "-api", "async", "-layout", f"{INPUT_NAME}[NCHW]"]
        # benchmark_app refuses -nstreams beside a hint; the plugin takes NUM_STREAMS from the load config
        if streams:
            plugin_config["CPU"]["NUM_STREAMS"] = streams
        args += ["-nireq", str(requests)] if requests else []
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / "config.json"
        cfg_file.write_text(json.dumps(plugin_config), encoding="utf-8")
        cmd = [exe, *[{"CONFIG": str(cfg_file), "INPUT.npy": str(input_npy)}.get(a, a) for a in args]]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 5 + 120, check=False)
        except subprocess.TimeoutExpired:
            return {"skipped": f"benchmark_app did not finish in {seconds * 5 + 120:g} s"}
    stats = parse_benchmark_app(proc.stdout + proc.stderr)
    record = {"command": "benchmark_app " + shlex.join(args), "load_config": plugin_config}
    if proc.returncode != 0 or "median_ms" not in stats:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        return record | {"skipped": f"benchmark_app failed (exit {proc.returncode}): {tail[0][:200]}"}
    return record | stats

"""The cross-check with OpenVINO's ``benchmark_app``, interleaved round by round with our own figures so
that both see the same machine: ``single_stream`` against its latency mode, ``offline`` against its
async mode at our best point."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.backends import BACKENDS, EngineSpec, open_runner
from edgefpn.backends.base import INPUT_NAME
from edgefpn.benchmarking.benchmark_app import benchmark_app
from edgefpn.benchmarking.timing import latency
from edgefpn.config import Config
from edgefpn.pipeline.common import log
from edgefpn.runtime import scenarios as sc

__all__ = ["offline_cross_check", "round_seconds", "single_stream"]


def round_seconds(total: float, rounds: int) -> int:
    """benchmark_app's ``-t`` per round: whole seconds (it accepts nothing else), at least 1."""
    return max(1, round(total / rounds))


def single_stream(
    spec: EngineSpec,
    feed: dict[str, np.ndarray],
    cfg: Config,
    iters: int,
    app_seconds: float,
    rounds: int,
    batch: int,
) -> dict[str, Any]:
    """Model-only samples (``_samples``) and, for OpenVINO, benchmark_app's latency mode interleaved."""
    threads, warmup = cfg.run.threads, cfg.check.warmup
    full = sc.batched(feed, batch)
    if not BACKENDS[spec.backend].benchmark_app or app_seconds <= 0:
        log(f"[benchmark] {spec.name}: {iters} x single stream")
        return {"_samples": latency(spec, full, threads, warmup, iters)}
    secs = round_seconds(app_seconds, rounds)
    log(f"[benchmark] {spec.name}: {rounds} rounds of {iters} x single stream, then benchmark_app -t {secs}")
    samples: list[float] = []
    app_rounds: list[dict[str, float]] = []
    record: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "input.npy"
        np.save(npy, np.ascontiguousarray(full[INPUT_NAME], dtype=np.float32))
        for _ in range(rounds):
            ours = latency(spec, full, threads, warmup, iters)
            samples.extend(ours)
            record = benchmark_app(spec, threads, secs, npy, mode="latency")
            if "median_ms" not in record:
                return {"_samples": samples, "benchmark_app": record}
            app_rounds.append(
                {k: record[k] for k in ("median_ms", "average_ms", "fps", "count") if k in record}
                | {"ours_p50_ms": round(float(np.median(ours)), 3)}
            )
    # each round's pair ran back to back; the median of the pairs' ratios ignores a round that another
    # process disturbed, which a ratio of pooled figures would not
    ratios = [r["ours_p50_ms"] / r["median_ms"] for r in app_rounds]
    return {
        "_samples": samples,
        "benchmark_app": {
            "mode": "latency",
            "command": record["command"],
            "load_config": record["load_config"],
            "rounds": app_rounds,
            "median_ms": round(float(np.median([r["median_ms"] for r in app_rounds])), 3),
            "ours_over_app_p50": round(float(np.median(ratios)), 3),
        },
    }


def offline_cross_check(
    family: dict[int, EngineSpec],
    off: dict[str, Any],
    feed: dict[str, np.ndarray],
    threads: int,
    app_seconds: float,
    rounds: int,
) -> dict[str, Any]:
    """Our best offline point against benchmark_app's async mode with the same streams, requests,
    threads and batch, interleaved round by round."""
    c = off["conditions"]
    spec = family[c["batch"]]
    secs = round_seconds(app_seconds, rounds)
    log(
        f"[benchmark] {spec.name}: {rounds} rounds of offline (batch {c['batch']}, {c['streams']} streams, "
        f"{c['requests']} requests) then benchmark_app async -t {secs}"
    )
    app_rounds: list[dict[str, Any]] = []  # "count" is None where benchmark_app printed none
    record: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "input.npy"
        np.save(npy, sc.batched(feed, c["batch"])[INPUT_NAME].astype(np.float32))
        for _ in range(rounds):
            ours = sc.offline_point(
                spec,
                feed,
                threads=threads,
                seconds=secs,
                streams=c["streams"],
                requests=c["requests"],
                open_runner=open_runner,
            )
            record = benchmark_app(
                spec, threads, secs, npy, mode="async", streams=c["streams"], requests=c["requests"]
            )
            if "fps" not in record:
                return record
            app_rounds.append({"fps": record["fps"], "count": record.get("count"), "ours_fps": ours["fps"]})
    return {
        "mode": "async",
        "command": record["command"],
        "load_config": record["load_config"],
        "rounds": app_rounds,
        "fps": round(float(np.median([r["fps"] for r in app_rounds])), 2),
        "ours_fps": round(float(np.median([r["ours_fps"] for r in app_rounds])), 2),
        "ours_over_app_fps": round(float(np.median([r["ours_fps"] / r["fps"] for r in app_rounds])), 3),
    }

"""check's latency: model-only and end-to-end percentiles per engine, and INT8 against FP32 in
interleaved pairs (the ``check.min_int8_speedup`` gate's measurement)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgefpn.backends import EngineSpec
from edgefpn.backends.base import INPUT_NAME
from edgefpn.config import Config
from edgefpn.inference import detect_file
from edgefpn.pipeline import e2e as e2e_stage
from edgefpn.pipeline.common import log

__all__ = ["int8_speedups", "latency", "percentiles"]


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p90": round(float(np.percentile(arr, 90)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "mean": round(float(arr.mean()), 3),
        "fps": round(float(1000.0 / arr.mean()), 2),
        "samples": len(samples_ms),
    }


# Latency is taken in this many rounds, each a block of model-only calls then a block of end-to-end
# calls (per threshold): a shared machine's slow minutes then fall on every depth alike, and the
# e2e / model-only ratio compares like with like.
_LATENCY_ROUNDS = 4


def latency(runner, pipe, deploy_pipe, records, cfg: Config) -> dict[str, Any]:
    """Model-only (one fixed input, back to back, as benchmark_app times it) and end to end (image file
    -> detections, cycling through the val images) at the deployment score threshold (a detections
    engine's model-only call too: its threshold is an input); end to end at the evaluation threshold
    too where the two differ. ``check.latency_iters`` samples of each."""
    c = cfg.check
    one, _ = deploy_pipe.feed_file(records[0].path)  # in the engine's contract (float or uint8 feed)
    # model-only: one full engine batch per call (export.batch copies of the image); end to end: one
    # image file per call, as a device handles a single camera (the runner fills the batch)
    feed = {k: np.repeat(v, cfg.export.batch, axis=0) for k, v in one.items()}
    for _ in range(c.warmup):
        runner.infer(feed)
    paths = [r.path for r in records]
    pipes = {"end_to_end": deploy_pipe}
    if deploy_pipe.post.score_thresh != pipe.post.score_thresh:
        pipes["end_to_end_eval"] = pipe
    model_only: list[float] = []
    e2e: dict[str, tuple[list[float], list[int]]] = {key: ([], []) for key in pipes}
    done = 0
    for r in range(_LATENCY_ROUNDS):
        n = c.latency_iters // _LATENCY_ROUNDS + (r < c.latency_iters % _LATENCY_ROUNDS)
        for _ in range(n):
            t0 = time.perf_counter()
            runner.infer(feed)
            model_only.append((time.perf_counter() - t0) * 1e3)
        for key, p in pipes.items():
            samples, found = e2e[key]
            for i in range(done, done + n):
                t0 = time.perf_counter()
                found.append(len(detect_file(runner, p, paths[i % len(paths)])))
                samples.append((time.perf_counter() - t0) * 1e3)
        done += n
    # the raw samples stay in the report for the latency-distribution plot of report.html
    result = {
        "model_only": percentiles(model_only)
        | {"samples_ms": [round(t, 4) for t in model_only], "batch": cfg.export.batch}
    }
    for key, p in pipes.items():
        samples, found = e2e[key]
        result[key] = percentiles(samples) | {
            "score_thresh": p.post.score_thresh,
            "detections_per_image": round(sum(found) / max(len(found), 1), 2),
        }
    return result


def int8_speedups(
    runners, engines: list[EngineSpec], pipe, records, cfg: Config
) -> dict[str, dict[str, Any]]:
    """Each INT8 engine's model-only speed relative to the FP32 engine of its backend, where there is one.

    The rule (the ``check.min_int8_speedup`` gate): the two engines are timed in ``check.latency_iters``
    interleaved pairs on the same input, the order alternating within pairs (int8 first, then fp32 first)
    so that neither always runs right after the other; the speedup is the median over the pairs of
    fp32 time / int8 time. On a shared machine a slow moment then slows both halves of a pair, and the
    verdict is a ratio from the same moments, not of two latencies measured minutes apart.
    """
    c = cfg.check
    # raw engines only: an -e2e twin runs its raw twin's network (and may take a uint8 feed)
    engines = [s for s in engines if not s.name.endswith(e2e_stage.SUFFIX)]
    by_key = {(s.backend, s.precision): s for s in engines}
    batch, _ = pipe.prepare_file(records[0].path)
    feed = {INPUT_NAME: batch}
    out: dict[str, dict[str, Any]] = {}
    for spec in engines:
        fp32 = by_key.get((spec.backend, "fp32"))
        if spec.precision != "int8" or fp32 is None:
            continue
        log(f"[check] paired latency: {spec.name} vs {fp32.name}")
        a, b = runners[spec.name], runners[fp32.name]
        for _ in range(c.warmup):
            a.infer(feed)
            b.infer(feed)
        t_int8: list[float] = []
        t_fp32: list[float] = []
        for i in range(max(c.latency_iters, 1)):
            for runner, times in ((a, t_int8), (b, t_fp32)) if i % 2 == 0 else ((b, t_fp32), (a, t_int8)):
                t0 = time.perf_counter()
                runner.infer(feed)
                times.append((time.perf_counter() - t0) * 1e3)
        ratios = np.asarray(t_fp32) / np.asarray(t_int8)
        out[spec.name] = {
            "vs": fp32.name,
            "speedup": round(float(np.median(ratios)), 3),
            "p50_ms": round(float(np.median(t_int8)), 3),
            "vs_p50_ms": round(float(np.median(t_fp32)), 3),
            "pairs": len(ratios),
            "min_speedup": c.min_int8_speedup,
        }
    return out

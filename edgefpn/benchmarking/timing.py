"""`edgefpn benchmark`'s timed calls: single-stream latency on a fresh runner, end to end from image
files, and the batch sweep (one batch-N call per batch, beside the best offline point at that batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.backends import EngineSpec, open_runner
from edgefpn.runtime import scenarios as sc

__all__ = ["batch_sweep", "end_to_end", "latency"]


def latency(
    spec: EngineSpec, feed: dict[str, np.ndarray], threads: int, warmup: int, iters: int
) -> list[float]:
    """``iters`` timed engine calls (ms) after ``warmup`` untimed ones, on a freshly opened runner."""
    with open_runner(spec, threads=threads) as runner:
        return sc.time_calls(lambda _: runner.infer(feed), warmup=warmup, iters=iters)


def end_to_end(
    spec: EngineSpec, pipe, paths: list[Path], threads: int, warmup: int, iters: int
) -> list[float]:
    """Image file -> detections at the deploy threshold, cycling through the val images."""
    from edgefpn.inference import detect_file

    with open_runner(spec, threads=threads) as runner:
        return sc.time_calls(
            lambda i: detect_file(runner, pipe, paths[i % len(paths)]), warmup=warmup, iters=iters
        )


def batch_sweep(
    family: dict[int, EngineSpec],
    points: list[dict[str, Any]],
    feed: dict[str, np.ndarray],
    threads: int,
    warmup: int,
    iters: int,
) -> list[dict[str, Any]]:
    """Per batch: the latency of one batch-N call (one request), and the best offline point at that batch."""
    from edgefpn.runtime.conditions import run_conditions

    rows = []
    for n, spec in sorted(family.items()):
        calls = max(10, iters // n)
        samples = latency(spec, sc.batched(feed, n), threads, warmup, calls)
        stats = sc.latency_stats(samples)
        best = max(
            (p for p in points if p["conditions"]["batch"] == n and p["engine_path"] == str(spec.path)),
            key=lambda p: p["fps"],
            default=None,
        )
        rows.append(
            {
                "engine": spec.name,
                "batch": n,
                "latency_ms": stats,
                "ms_per_image": round(stats["mean"] / n, 3),
                "fps": round(1000.0 * n / stats["mean"], 2),
                "conditions": run_conditions(threads=threads, streams=1, requests=1, batch=n),
                "offline": None if best is None else {"fps": best["fps"], "conditions": best["conditions"]},
            }
        )
    return rows

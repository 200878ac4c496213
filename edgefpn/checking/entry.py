"""One engine's report entry in check: its mAP and deltas against the reference, its latency summary,
and its raw-tensor agreement grouped by pyramid level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.backends import EngineSpec
from edgefpn.metrics.tensors import aggregate_agreement
from edgefpn.postprocess import split_output_name

__all__ = ["engine_entry", "finite", "per_level_agreement"]


def finite(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NaN/Inf are reported by the tensor gate; keep them from crashing NMS."""
    return {k: np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) for k, v in outputs.items()}


def per_level_agreement(per_output: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Per-output agreement, and the per-level outputs (``<branch>_p<k>``) grouped by level then branch.

    Outputs that are not per level (a two-stage detector's proposals, RoI head) appear in ``outputs``
    only; the gates check them there.
    """
    outputs = {name: aggregate_agreement(stats) for name, stats in per_output.items()}
    levels: dict[str, dict[str, Any]] = {}
    for name, agg in outputs.items():
        branch, level = split_output_name(name)
        if level is not None:
            levels.setdefault(level, {})[branch] = agg
    return dict(sorted(levels.items(), key=lambda kv: int(kv[0][1:]))), outputs


def engine_entry(spec: EngineSpec, m: dict, ref: dict, latency: dict, run_dir: Path) -> dict[str, Any]:
    mo = latency["model_only"]
    return {
        "name": spec.name,
        "backend": spec.backend,
        "precision": spec.precision,
        "path": spec.path.relative_to(run_dir).as_posix()
        if spec.path.is_relative_to(run_dir)
        else str(spec.path),
        "map": m["map"],
        "map50": m["map50"],
        "map_delta": round(m["map"] - ref["map"], 4),
        "map50_delta": round(m["map50"] - ref["map50"], 4),
        "ap_small_delta": round(m["map_small"] - ref["map_small"], 4),
        "ap_medium_delta": round(m["map_medium"] - ref["map_medium"], 4),
        "ap_large_delta": round(m["map_large"] - ref["map_large"], 4),
        "per_class_delta": {k: round(v - ref["per_class"].get(k, 0.0), 4) for k, v in m["per_class"].items()},
        "metrics": m,
        "latency_ms": {k: mo[k] for k in ("p50", "p90", "p99", "mean")},
        "fps": mo["fps"],
        "latency": latency,
    }

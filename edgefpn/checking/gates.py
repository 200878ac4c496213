"""check's gates: the tolerances an engine's report entry is held to (``check.*`` in the config),
one line per broken bound."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgefpn.config import Config
from edgefpn.errors import CheckFailed
from edgefpn.postprocess import split_output_name

__all__ = ["E2E_AGREEMENT", "gates", "raise_on_failures", "snr_floor_db", "twin_failures"]

# An end-to-end engine against its raw twin (same backend, precision and network; the twin decoded by
# numpy), on the same images at postprocess.score_thresh: (min matched fraction, min mean IoU, max
# score error). FP32 holds the issue-15 floors. FP16 / INT8 networks are the twin's own, but a backend
# may fuse the grafted graph's first and last layers differently, so their scores may move by a
# rounding of the reduced precision; their mAP gate still applies in full.
E2E_AGREEMENT = {"fp32": (0.99, 0.99, 1e-4), "fp16": (0.98, 0.98, 1e-2), "int8": (0.98, 0.98, 1e-2)}


def raise_on_failures(failures: list[str], out: Path) -> None:
    if failures:
        raise CheckFailed(f"{out}: {len(failures)} gate(s) failed: " + "; ".join(failures))


def gates(entry: dict, cfg: Config, *, is_reference: bool, selected: tuple[str, ...] = ()) -> dict[str, Any]:
    """The engine's gate results; ``selected`` outputs (see ``Decoder.selected_outputs``) only fail on
    NaN/Inf."""
    precision = entry["precision"]
    max_drop = cfg.check.max_map_drop.get(precision)
    min_cos = cfg.check.min_cosine.get(precision)
    failed: list[str] = []
    if not is_reference:
        if max_drop is not None and entry["map"] < 0:  # COCOeval's -1: no ground truth (refused up front)
            failed.append("mAP undefined: no ground truth in the evaluated images, nothing to measure")
        elif max_drop is not None and abs(entry["map_delta"]) > max_drop:
            failed.append(f"mAP delta {entry['map_delta']:+.3f} exceeds ±{max_drop} AP points")
        # per-level outputs level by level, then the outputs that are not per level (two-stage heads)
        per_level = [
            (f"{branch}_{level}", stats, f" (level {level})")
            for level, branches in entry.get("levels", {}).items()
            for branch, stats in branches.items()
        ]
        whole = [
            (name, stats, "")
            for name, stats in entry.get("outputs", {}).items()
            if split_output_name(name)[1] is None
        ]
        for name, stats, where in per_level + whole:
            if stats["nonfinite"]:
                failed.append(f"{name}: {stats['nonfinite']} NaN/Inf values{where}")
            elif name in selected:
                continue
            elif min_cos is not None and stats["cosine"] < min_cos:
                failed.append(f"{name}: cosine {stats['cosine']:.6f} < {min_cos}{where}")
            elif min_cos is not None and stats["snr_db"] < (floor := snr_floor_db(min_cos)):
                failed.append(
                    f"{name}: SNR {stats['snr_db']:.1f} dB < {floor:.1f} dB, the floor "
                    f"min cosine {min_cos} implies (a scale error cosine cannot see){where}"
                )
        if "twin" in entry:
            failed += twin_failures(entry["twin"], precision)
    if (speed := entry.get("int8_speedup")) and speed["speedup"] < speed["min_speedup"]:
        what = "slower than" if speed["speedup"] < 1 else "not enough faster than"
        failed.append(
            f"INT8 is {what} {speed['vs']}: {speed['speedup']:.2f}x its speed, model only "
            f"({speed['p50_ms']:.2f} vs {speed['vs_p50_ms']:.2f} ms p50 over {speed['pairs']} "
            f"interleaved pairs; check.min_int8_speedup {speed['min_speedup']:g})"
        )
    return {"max_map_drop": max_drop, "min_cosine": min_cos, "failed": failed, "passed": not failed}


def twin_failures(twin: dict[str, Any], precision: str) -> list[str]:
    """An end-to-end engine against its raw twin (E2E_AGREEMENT): one line per broken bound."""
    if not twin["present"]:
        return [f"no {twin['engine']} to compare the in-graph contract with (build or check it too)"]
    min_matched, min_iou, max_err = E2E_AGREEMENT.get(precision, E2E_AGREEMENT["int8"])
    vs = f"vs {twin['engine']}"
    failed = []
    if twin["matched_fraction"] < min_matched:
        failed.append(
            f"detections {vs}: matched fraction {twin['matched_fraction']:.4f} < {min_matched} "
            f"({twin['matched']} of {max(twin['n_ref'], twin['n_test'])}; {twin['label_flips']} label flips)"
        )
    if twin["mean_iou"] < min_iou:
        failed.append(f"detections {vs}: mean IoU {twin['mean_iou']:.4f} < {min_iou}")
    if twin["max_score_error"] > max_err:
        failed.append(f"detections {vs}: max score error {twin['max_score_error']:.2g} > {max_err:g}")
    return failed


def snr_floor_db(min_cosine: float) -> float:
    """SNR floor that goes with ``min_cosine``: the SNR of an error orthogonal to the reference at that
    cosine, cos² / (1 - cos²), less 3 dB.

    Cosine is blind to scale (2 x ref has cosine 1), so the same tolerance is also applied as an SNR
    floor: a scaled or offset level fails it. The 3 dB (twice the error energy) leaves room for real
    quantization error, which is slightly correlated with the reference and measured 0.5-2 dB below
    the orthogonal figure on the tiny model's int8 and fp16 engines, so that engines passing the
    cosine gate do not newly fail. Floors: fp32 0.99999 -> 44 dB, fp16 0.999 -> 24 dB, int8 0.97 -> 9 dB.
    """
    c2 = min(max(min_cosine, 0.0), 1.0 - 1e-12) ** 2
    return 10.0 * math.log10(c2 / (1.0 - c2)) - 3.0 if c2 > 0 else float("-inf")

"""OpenVINO INT8 through NNCF with mAP in the loop: the ``openvino/int8`` half of the `quantize` stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgefpn.artifacts import Artifact, atomic_output
from edgefpn.backends import EngineSpec
from edgefpn.calibration import CalibrationSet, nncf_dataset
from edgefpn.config import Config
from edgefpn.manifests import int8_result
from edgefpn.pipeline.common import log
from edgefpn.quantize.qdq_loop import model_batch, val_evaluator
from edgefpn.stages import QUANTIZE_OPENVINO

__all__ = ["nncf_with_accuracy", "openvino_ranking"]


def nncf_with_accuracy(
    cfg: Config,
    run_dir: Path,
    onnx_art: Artifact,
    calib: CalibrationSet,
    key: str,
    int8_art: Artifact,
    data,
    *,
    out: Path,
    force: bool,
) -> Artifact | None:
    """NNCF INT8 IR with its own accuracy loop.

    It starts from what the QDQ loop kept in float; NNCF quantizes differently (its own ranges and
    op coverage), so its mAP is measured on val too, and while the drop is over budget the next most
    sensitive group of the QDQ ranking is kept in float as well.
    """
    import shutil

    import onnx

    from edgefpn.quantize.qdq import node_groups
    from edgefpn.quantize.targets import openvino_int8, openvino_missing

    if reason := openvino_missing():
        log(f"[quantize] OpenVINO INT8 skipped: {reason}")
        _record_skip(int8_art.path, {"openvino_int8": {"skipped": reason}})
        return None
    q = cfg.quantize
    int8 = int8_result(int8_art)
    kept, accuracy = int8.exclude_nodes, dict(int8.accuracy)
    chash = QUANTIZE_OPENVINO.config_hash(cfg, kept_float=sorted(kept))
    val = cfg.data.val_split  # its own accuracy loop reads val, like the QDQ one
    inputs = {
        "model": onnx_art.sha256,
        "calibration": key,
        "int8_qdq": int8_art.sha256,
        "val_annotations": data.annotation_hashes[val],
        "val_images": data.images_hash(val),
    }
    if art := QUANTIZE_OPENVINO.fresh(out, config_hash=chash, inputs=inputs, force=force):
        log(f"[quantize] up to date: {out}")
        return art

    groups = node_groups(onnx.load(str(onnx_art.path)))
    ranking = openvino_ranking(accuracy, groups)
    evaluator = val_evaluator(cfg, run_dir, data, onnx_art)
    ref_map = float(accuracy["reference_map"])
    dataset = nncf_dataset(calib, model_batch=model_batch(onnx_art), batch_size=q.batch_size)
    log(f"[quantize] OpenVINO INT8 with NNCF on {len(calib)} calibration images")
    steps: list[dict[str, Any]] = []
    extra_groups: list[str] = []
    with atomic_output(out) as tmp:
        while True:
            ignored = [*kept, *(n for g in extra_groups for n in groups[g])]
            shutil.rmtree(tmp, ignore_errors=True)
            info = openvino_int8(onnx_art.path, tmp, dataset, subset_size=len(calib), ignored=ignored)
            ov_map = evaluator.map_of(evaluator.detect(EngineSpec("openvino-int8", "openvino", "int8", tmp)))
            drop = ref_map - ov_map
            steps.append(
                {"extra_float_groups": list(extra_groups), "map": round(ov_map, 3), "drop": round(drop, 3)}
            )
            log(
                f"[quantize] OpenVINO INT8 mAP {ov_map:.2f} (drop {drop:.2f}, budget {q.max_map_drop:g})"
                + (f" with {', '.join(extra_groups)} also in float" if extra_groups else "")
            )
            if drop <= q.max_map_drop or not ranking:
                break
            extra_groups.append(ranking.pop(0))
    if drop > q.max_map_drop:
        log(f"[quantize] WARNING: OpenVINO INT8 drop {drop:.2f} stays over budget; the check stage gates it")
    log(f"[quantize] OpenVINO INT8 ({info['fake_quantize_ops']} FakeQuantize ops): {out / 'model.xml'}")
    return QUANTIZE_OPENVINO.record(
        out,
        config_hash=chash,
        inputs=inputs,
        extra={
            "precision": "int8",
            "format": "openvino-ir",
            "calibration": calib.describe(),
            "accuracy": {
                "reference_map": ref_map,
                "int8_map": round(ov_map, 3),
                "drop": round(drop, 3),
                "budget": q.max_map_drop,
                "budget_met": drop <= q.max_map_drop,
                "steps": steps,
                "extra_float_groups": extra_groups,
            },
            **info,
        },
    )


def openvino_ranking(accuracy: dict[str, Any], groups: dict[str, list[str]]) -> list[str]:
    """Groups to keep in float next, most helpful first: the QDQ loop's measured ranking where it ran
    (gains > 0 only), else a fixed prior (head branches, then FPN, then backbone; finest level first)."""
    already = set(accuracy.get("kept_float_groups") or [])
    sens = accuracy.get("sensitivity") or {}
    candidates = sens.get("candidates") or []
    if candidates:
        ranked = sorted((c for c in candidates if c["recovered"] > 0), key=lambda c: -c["recovered"])
        return [c["group"] for c in ranked if c["group"] not in already and c["group"] in groups]
    order = {"head": 0, "fpn": 1, "backbone": 2}
    return sorted(
        (g for g in groups if g not in already),
        key=lambda g: (order.get(g.split("/")[0].split("-")[0], 3), g),
    )


def _record_skip(path: Path, extra: dict[str, Any]) -> None:
    """Add a skip note to an existing manifest (rewritten whole, atomically)."""
    from edgefpn.artifacts import manifest_path, read_manifest, write_json

    manifest = read_manifest(path)
    if manifest is not None and not all(manifest.get(k) == v for k, v in extra.items()):
        write_json(manifest_path(path), {**manifest, **extra})

"""INT8 QDQ with mAP in the loop: the ``model.int8.onnx`` / ``model.int8.ort.onnx`` half of the
`quantize` stage (``edgefpn.pipeline.quantize`` decides whether a file is up to date, this makes it)."""

from __future__ import annotations

from pathlib import Path

from edgefpn.artifacts import Artifact, atomic_output
from edgefpn.backends import EngineSpec
from edgefpn.calibration import CalibrationSet, calibrate
from edgefpn.config import Config, to_dict
from edgefpn.manifests import onnx_batch
from edgefpn.pipeline.common import log, make_prepost, recorded_arch
from edgefpn.stages import StageKey

__all__ = ["map_of_file", "model_batch", "qdq_with_accuracy", "val_evaluator"]

CACHE_DIR = "cache"  # in the run directory: the calibration range caches


def qdq_with_accuracy(
    cfg: Config,
    onnx_art: Artifact,
    out: Path,
    key: StageKey,
    chash: str,
    flavour: str,
    *,
    data,
    calib: CalibrationSet,
    inputs: dict[str, str],
    reference: dict[str, list],
    force: bool,
    progress: bool,
) -> Artifact:
    """The QDQ model ``out`` of ``flavour`` (symmetric: TensorRT's; u8s8: ORT CPU's), reused when up to
    date; else made with its mAP on val measured against PyTorch (``reference``: the PyTorch
    detections, filled once for both flavours), and while the drop is over ``quantize.max_map_drop``
    the most sensitive network parts are kept in float."""
    art = key.fresh(out, config_hash=chash, inputs=inputs, force=force)
    if art is not None:
        log(f"[quantize] up to date: {out}")
        return art
    run_dir, cache_dir = out.parent, out.parent / CACHE_DIR
    import onnx

    from edgefpn.models.registry import arch_spec
    from edgefpn.pipeline import train as train_stage
    from edgefpn.quantize import ort_cpu
    from edgefpn.quantize.accuracy import greedy_keep_float
    from edgefpn.quantize.qdq import check_qdq, node_groups, quantize_qdq

    tensorrt = flavour == "symmetric"  # the contract TensorRT explicit quantization reads
    quantize_fn = quantize_qdq if tensorrt else ort_cpu.quantize_qdq_ort
    q = cfg.quantize
    model_path = onnx_art.path
    calib_res = calibrate(cfg, model_path, onnx_art.sha256, calib, cache_dir, log=log)
    base_exclude = list(q.exclude_nodes)

    op_types = arch_spec(recorded_arch(cfg, run_dir)).qdq_op_types

    def quantize(dst: Path, exclude) -> None:
        quantize_fn(model_path, dst, calib_res.cache, q.method, exclude=exclude, op_types=op_types)

    split = data.split(cfg.data.val_split)
    evaluator = val_evaluator(cfg, run_dir, data, onnx_art)
    ref_spec = EngineSpec("torch-fp32", "torch", "fp32", run_dir / train_stage.ARTIFACT)
    if "results" not in reference:
        log(f"[quantize] reference mAP: PyTorch on {len(split.images)} val images")
        reference["results"] = evaluator.detect(ref_spec)
    ref_results = reference["results"]
    ref_map = evaluator.map_of(ref_results)

    sensitivity = None
    exclude = base_exclude
    with atomic_output(out) as tmp:
        quantize(tmp, exclude)
        int8_map = map_of_file(evaluator, tmp)
        log(
            f"[quantize] INT8 QDQ ({flavour}) mAP {int8_map:.2f} vs PyTorch {ref_map:.2f} "
            f"(drop {ref_map - int8_map:.2f}, budget {q.max_map_drop:g})"
        )
        if ref_map - int8_map > q.max_map_drop:
            groups = node_groups(onnx.load(str(model_path)))
            sensitivity = greedy_keep_float(
                evaluator,
                reference_results=ref_results,
                groups=groups,
                base_exclude=base_exclude,
                budget=q.max_map_drop,
                quantize=quantize,
                log=log,
            )
            if sensitivity.kept_float:
                exclude = [*base_exclude, *(n for g in sensitivity.kept_float for n in groups[g])]
                quantize(tmp, exclude)
                int8_map = map_of_file(evaluator, tmp)
        problems = (
            check_qdq(onnx.load(str(tmp)))
            if tensorrt
            else ort_cpu.check_qdq_ort(onnx.load(str(tmp)), exclude, op_types)
        )
        if (
            problems
        ):  # a bug here, not a user error: TensorRT would reject or mis-read the file, ORT run it slowly
            raise RuntimeError(f"{out}: QDQ model breaks the {flavour} contract: {problems[0]}")
    drop = ref_map - int8_map
    met = drop <= q.max_map_drop
    if met:
        log(f"[quantize] INT8 mAP {int8_map:.2f}, drop {drop:.2f} <= {q.max_map_drop:g}: {out}")
    else:
        log(
            f"[quantize] WARNING: INT8 mAP drop {drop:.2f} exceeds quantize.max_map_drop {q.max_map_drop:g} "
            f"even with {sensitivity.kept_float if sensitivity else []} kept in float; the check stage "
            "gates it"
        )
    accuracy = {
        "reference_map": round(ref_map, 3),
        "int8_map": round(int8_map, 3),
        "drop": round(drop, 3),
        "budget": q.max_map_drop,
        "budget_met": met,
        "val_images": len(split.images),
        "kept_float_groups": sensitivity.kept_float if sensitivity else [],
        "sensitivity": sensitivity.to_dict() if sensitivity else None,
    }
    return key.record(
        out,
        config_hash=chash,
        inputs=inputs,
        extra={
            "precision": "int8",
            "format": "onnx-qdq",
            "flavour": flavour,
            "scheme": {
                "activations": "int8 symmetric per-tensor",
                "weights": "int8 symmetric per-channel (axis 0)",
                "bias": "float",
                "outputs": "float",
            }
            if tensorrt
            else ort_cpu.SCHEME,
            "method": q.method,
            "percentile": q.percentile if q.method == "percentile" else None,
            "calibration": {
                **calib.describe(),
                "key": calib_res.key,
                "cache": str(calib_res.cache),
                "reused": calib_res.reused,
                "seconds": round(calib_res.seconds, 2),
            },
            "exclude_nodes": sorted(set(exclude)),
            "accuracy": accuracy,
            "quantize": to_dict(q),
            "op_types": sorted(op_types) if op_types is not None else "onnxruntime default",
        },
    )


def map_of_file(evaluator, path: Path) -> float:
    spec = EngineSpec("onnxruntime-int8", "onnxruntime", "int8", path)
    return evaluator.map_of(evaluator.detect(spec))


def val_evaluator(cfg: Config, run_dir: Path, data, onnx_art: Artifact):
    """The mAP-in-the-loop evaluator on the val split, at the batch of ``onnx_art``."""
    from edgefpn.quantize.accuracy import Evaluator

    split = data.split(cfg.data.val_split)
    return Evaluator(
        make_prepost(cfg, arch=recorded_arch(cfg, run_dir)),
        split.images,
        split.category_ids,
        data.ann_file(cfg.data.val_split),
        threads=cfg.run.threads,
        batch=model_batch(onnx_art),
    )


def model_batch(onnx_art: Artifact) -> int:
    return onnx_batch(onnx_art)

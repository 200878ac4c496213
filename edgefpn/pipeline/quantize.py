"""Stage `quantize`: INT8 from calibration data with mAP in the loop, plus FP16.

Writes, each with its own manifest:

* ``model.int8.onnx``: explicit symmetric INT8 QDQ (TensorRT explicit quantization), from streamed,
  cached calibration ranges; its mAP on val is measured against PyTorch, and when the drop is over
  ``quantize.max_map_drop`` the most sensitive network parts are kept in float.
* ``model.int8.ort.onnx``: the ONNX Runtime CPU flavour (uint8 activations, int8 per-channel weights,
  int32 biases; ``edgefpn.quantize.ort_cpu``) from the same ranges, through the same mAP loop of its
  own: the symmetric model is slower than FP32 in ORT on x86, this one is the ``onnxruntime-int8`` engine.
* ``model.fp16.onnx``: FP16 weights and compute, float32 inputs and outputs.
* ``openvino/int8/model.xml``: OpenVINO INT8 through NNCF from the same calibration images
  (skipped, with the reason in the int8 manifest, when openvino / nncf are not installed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgefpn.artifacts import Artifact, atomic_output
from edgefpn.backends import EngineSpec
from edgefpn.calibration import CalibrationSet, cache_key, calibrate, nncf_dataset
from edgefpn.calibration.dataset import IMAGE_SUFFIXES
from edgefpn.config import Config, to_dict
from edgefpn.manifests import int8_result, onnx_batch
from edgefpn.pipeline import export as export_stage
from edgefpn.pipeline import train as train_stage
from edgefpn.pipeline.common import log, make_prepost, recorded_arch
from edgefpn.pipeline.data import require_annotations
from edgefpn.stages import QUANTIZE_FP16, QUANTIZE_INT8, QUANTIZE_OPENVINO, QUANTIZE_ORT_INT8, StageKey

ARTIFACT = "model.int8.onnx"
ORT_INT8 = "model.int8.ort.onnx"
FP16 = "model.fp16.onnx"
OPENVINO_INT8 = Path("openvino") / "int8"
CACHE_DIR = "cache"


def run(cfg: Config, run_dir: Path, *, force: bool = False, progress: bool = True) -> Artifact | None:
    """Bring ``model.int8.onnx`` (and the FP16 / OpenVINO INT8 files) up to date; None when disabled."""
    if not cfg.quantize.enabled:
        log("[quantize] skipped: quantize.enabled is false")
        return None
    onnx_art = export_stage.run(cfg, run_dir, progress=progress)
    from edgefpn.pipeline import data as data_stage

    data = data_stage.run(cfg, progress=progress)
    val_split = data.split(cfg.data.val_split)  # before anything is written: the accuracy loops need boxes
    require_annotations(val_split, val_split.images, what="quantize's mAP-in-the-loop check")
    calib = CalibrationSet(cfg)  # refuses val overlap / empty folders before anything is written
    if calib.skipped:  # never dropped without a word (a GIF, a sidecar file)
        shown = ", ".join(calib.skipped[:5]) + (
            f" and {len(calib.skipped) - 5} more" if len(calib.skipped) > 5 else ""
        )
        log(
            f"[quantize] {calib.source}: skipped {len(calib.skipped)} file(s) that are not "
            f"{'/'.join(sorted(s[1:] for s in IMAGE_SUFFIXES))} images: {shown}"
        )
    key = cache_key(onnx_art.sha256, calib, cfg)
    q = cfg.quantize
    chash = QUANTIZE_INT8.config_hash(cfg)
    val = cfg.data.val_split
    # the mAP-in-the-loop reads the val images (calibration images are in `key`)
    inputs = {
        "model": onnx_art.sha256,
        "calibration": key,
        "val_annotations": data.annotation_hashes[val],
        "val_images": data.images_hash(val),
    }

    reference: dict[str, list] = {}  # PyTorch's val detections, run once for both flavours
    art = _flavour(
        cfg,
        run_dir / ARTIFACT,
        onnx_art,
        data,
        calib,
        QUANTIZE_INT8,
        chash,
        inputs,
        "symmetric",
        reference,
        force=force,
        progress=progress,
    )
    # the onnxruntime-int8 engine: U8S8 unless quantize.onnxruntime asks for the symmetric model
    _flavour(
        cfg,
        run_dir / ORT_INT8,
        onnx_art,
        data,
        calib,
        QUANTIZE_ORT_INT8,
        QUANTIZE_ORT_INT8.config_hash(cfg),
        inputs,
        q.onnxruntime,
        reference,
        force=force,
        progress=progress,
    )
    if q.fp16:
        _fp16(cfg, run_dir, onnx_art, calib, force=force)
    if q.openvino:
        _openvino(cfg, run_dir, onnx_art, calib, key, art, data, force=force)
    return art


# ----------------------------------------------------------------------------------------------
# INT8 QDQ with accuracy in the loop


def _flavour(
    cfg: Config,
    out: Path,
    onnx_art: Artifact,
    data,
    calib: CalibrationSet,
    key: StageKey,
    chash: str,
    inputs: dict[str, str],
    flavour: str,
    reference: dict[str, list],
    *,
    force: bool,
    progress: bool,
) -> Artifact:
    """The QDQ model ``out`` of ``flavour`` (symmetric: TensorRT's; u8s8: ORT CPU's), reused when up to
    date."""
    art = key.fresh(out, config_hash=chash, inputs=inputs, force=force)
    if art is not None:
        log(f"[quantize] up to date: {out}")
        return art
    return _int8_qdq(
        cfg, out.parent, onnx_art, data, calib, key, chash, inputs, flavour, out, reference, progress=progress
    )


def _int8_qdq(
    cfg: Config,
    run_dir: Path,
    onnx_art: Artifact,
    data,
    calib: CalibrationSet,
    key: StageKey,
    chash: str,
    inputs: dict[str, str],
    flavour: str,
    out: Path,
    reference: dict[str, list],
    *,
    progress: bool,
) -> Artifact:
    import onnx

    from edgefpn.models.registry import arch_spec
    from edgefpn.quantize import ort_cpu
    from edgefpn.quantize.accuracy import Evaluator, greedy_keep_float
    from edgefpn.quantize.qdq import check_qdq, node_groups, quantize_qdq

    tensorrt = flavour == "symmetric"  # the contract TensorRT explicit quantization reads
    quantize_fn = quantize_qdq if tensorrt else ort_cpu.quantize_qdq_ort
    q = cfg.quantize
    model_path = onnx_art.path
    calib_res = calibrate(cfg, model_path, onnx_art.sha256, calib, run_dir / CACHE_DIR, log=log)
    base_exclude = list(q.exclude_nodes)

    op_types = arch_spec(recorded_arch(cfg, run_dir)).qdq_op_types

    def quantize(dst: Path, exclude) -> None:
        quantize_fn(model_path, dst, calib_res.cache, q.method, exclude=exclude, op_types=op_types)

    split = data.split(cfg.data.val_split)
    evaluator = Evaluator(
        make_prepost(cfg, arch=recorded_arch(cfg, run_dir)),
        split.images,
        split.category_ids,
        data.ann_file(cfg.data.val_split),
        threads=cfg.run.threads,
        batch=_batch(onnx_art),
    )
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
        int8_map = _map_of_file(evaluator, tmp)
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
                int8_map = _map_of_file(evaluator, tmp)
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


def _map_of_file(evaluator, path: Path) -> float:
    spec = EngineSpec("onnxruntime-int8", "onnxruntime", "int8", path)
    return evaluator.map_of(evaluator.detect(spec))


# ----------------------------------------------------------------------------------------------
# FP16 ONNX and OpenVINO INT8


def _fp16(cfg: Config, run_dir: Path, onnx_art: Artifact, calib: CalibrationSet, *, force: bool) -> Artifact:
    from edgefpn.quantize.targets import fp16_onnx

    out = run_dir / FP16
    chash = QUANTIZE_FP16.config_hash(cfg)
    inputs = {"model": onnx_art.sha256}
    if art := QUANTIZE_FP16.fresh(out, config_hash=chash, inputs=inputs, force=force):
        log(f"[quantize] up to date: {out}")
        return art
    sample = next(calib.iter_model_inputs(_batch(onnx_art), batch_size=cfg.quantize.batch_size))
    with atomic_output(out) as tmp:
        info = fp16_onnx(onnx_art.path, tmp, sample, threads=cfg.run.threads)
    note = (
        "runs in ONNX Runtime CPU"
        if info["ort_cpu_runs"]
        else f"ONNX Runtime CPU cannot run it: {info['ort_cpu_error']}"
    )
    log(f"[quantize] FP16 ONNX ({note}): {out}")
    return QUANTIZE_FP16.record(
        out,
        config_hash=chash,
        inputs=inputs,
        extra={"precision": "fp16", "io_dtype": "float32", **info},
    )


def _openvino(
    cfg: Config,
    run_dir: Path,
    onnx_art: Artifact,
    calib: CalibrationSet,
    key: str,
    int8_art: Artifact,
    data,
    *,
    force: bool,
) -> Artifact | None:
    """NNCF INT8 IR with its own accuracy loop.

    It starts from what the QDQ loop kept in float; NNCF quantizes differently (its own ranges and
    op coverage), so its mAP is measured on val too, and while the drop is over budget the next most
    sensitive group of the QDQ ranking is kept in float as well.
    """
    import shutil

    import onnx

    from edgefpn.quantize.accuracy import Evaluator
    from edgefpn.quantize.qdq import node_groups
    from edgefpn.quantize.targets import openvino_int8, openvino_missing

    out = run_dir / OPENVINO_INT8
    if reason := openvino_missing():
        log(f"[quantize] OpenVINO INT8 skipped: {reason}")
        _record_skip(run_dir / ARTIFACT, {"openvino_int8": {"skipped": reason}})
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
    ranking = _openvino_ranking(accuracy, groups)
    split = data.split(cfg.data.val_split)
    evaluator = Evaluator(
        make_prepost(cfg, arch=recorded_arch(cfg, run_dir)),
        split.images,
        split.category_ids,
        data.ann_file(cfg.data.val_split),
        threads=cfg.run.threads,
        batch=_batch(onnx_art),
    )
    ref_map = float(accuracy["reference_map"])
    dataset = nncf_dataset(calib, model_batch=_batch(onnx_art), batch_size=q.batch_size)
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


def _openvino_ranking(accuracy: dict[str, Any], groups: dict[str, list[str]]) -> list[str]:
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


def _batch(onnx_art: Artifact) -> int:
    return onnx_batch(onnx_art)


def _record_skip(path: Path, extra: dict[str, Any]) -> None:
    """Add a skip note to an existing manifest (rewritten whole, atomically)."""
    from edgefpn.artifacts import manifest_path, read_manifest, write_json

    manifest = read_manifest(path)
    if manifest is not None and not all(manifest.get(k) == v for k, v in extra.items()):
        write_json(manifest_path(path), {**manifest, **extra})

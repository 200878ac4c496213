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

from functools import partial
from pathlib import Path

from edgefpn.artifacts import Artifact, atomic_output
from edgefpn.calibration import CalibrationSet, cache_key
from edgefpn.calibration.dataset import IMAGE_SUFFIXES
from edgefpn.config import Config
from edgefpn.pipeline import export as export_stage
from edgefpn.pipeline.common import log
from edgefpn.pipeline.data import require_annotations
from edgefpn.stages import QUANTIZE_FP16, QUANTIZE_INT8, QUANTIZE_ORT_INT8

ARTIFACT = "model.int8.onnx"
ORT_INT8 = "model.int8.ort.onnx"
FP16 = "model.fp16.onnx"
OPENVINO_INT8 = Path("openvino") / "int8"


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

    from edgefpn.quantize.qdq_loop import qdq_with_accuracy

    reference: dict[str, list] = {}  # PyTorch's val detections, run once for both flavours
    flavour = partial(
        qdq_with_accuracy,
        cfg,
        onnx_art,
        data=data,
        calib=calib,
        inputs=inputs,
        reference=reference,
        force=force,
        progress=progress,
    )
    art = flavour(run_dir / ARTIFACT, QUANTIZE_INT8, chash, "symmetric")
    # the onnxruntime-int8 engine: U8S8 unless quantize.onnxruntime asks for the symmetric model
    flavour(run_dir / ORT_INT8, QUANTIZE_ORT_INT8, QUANTIZE_ORT_INT8.config_hash(cfg), q.onnxruntime)
    if q.fp16:
        _fp16(cfg, run_dir, onnx_art, calib, force=force)
    if q.openvino:
        from edgefpn.quantize.nncf_loop import nncf_with_accuracy

        nncf_with_accuracy(
            cfg, run_dir, onnx_art, calib, key, art, data, out=run_dir / OPENVINO_INT8, force=force
        )
    return art


# ----------------------------------------------------------------------------------------------
# FP16 ONNX (OpenVINO INT8: edgefpn.quantize.nncf_loop)


def _fp16(cfg: Config, run_dir: Path, onnx_art: Artifact, calib: CalibrationSet, *, force: bool) -> Artifact:
    from edgefpn.quantize.qdq_loop import model_batch
    from edgefpn.quantize.targets import fp16_onnx

    out = run_dir / FP16
    chash = QUANTIZE_FP16.config_hash(cfg)
    inputs = {"model": onnx_art.sha256}
    if art := QUANTIZE_FP16.fresh(out, config_hash=chash, inputs=inputs, force=force):
        log(f"[quantize] up to date: {out}")
        return art
    sample = next(calib.iter_model_inputs(model_batch(onnx_art), batch_size=cfg.quantize.batch_size))
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

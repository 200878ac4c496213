"""The other precisions the quantize stage writes: FP16 ONNX and OpenVINO INT8 (NNCF)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["fp16_onnx", "openvino_int8", "openvino_missing"]


def fp16_onnx(model_path: Path, out: Path, sample: np.ndarray, *, threads: int) -> dict:
    """Write an FP16 copy of ``model_path`` with float32 inputs/outputs; report whether ORT CPU runs it.

    Uses ``onnxruntime.transformers.float16`` (ships with onnxruntime). ``keep_io_types=True`` puts
    Cast nodes at the graph edges so callers keep feeding and reading float32.
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from edgefpn.onnx_guard import save_onnx

    model = convert_float_to_float16(
        onnx.load(str(model_path)), keep_io_types=True, disable_shape_infer=False
    )
    _drop_duplicate_nodes(model)
    save_onnx(model, out)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = threads, 3
    try:
        sess = ort.InferenceSession(str(out), sess_options=opts, providers=["CPUExecutionProvider"])
        outs = sess.run(None, {sess.get_inputs()[0].name: sample})
        finite = all(bool(np.isfinite(o).all()) for o in outs)
        return {
            "ort_cpu_runs": True,
            "ort_cpu_outputs_finite": finite,
            "output_dtypes": sorted({str(o.dtype) for o in outs}),
        }
    except Exception as exc:  # ORT raises untyped errors; the file is still useful to TensorRT / OpenVINO
        return {"ort_cpu_runs": False, "ort_cpu_error": str(exc).strip().splitlines()[0][:300]}


def _drop_duplicate_nodes(model) -> int:
    """Remove nodes identical to an earlier one (same name, inputs, outputs and attributes).

    The float16 converter keeps ops it cannot run in FP16 (RoiAlign, NonMaxSuppression, TopK, ...) in
    float32 behind a Cast per input, and names that Cast after the input tensor; a tensor feeding several
    such ops (Faster R-CNN's RoI boxes go to one RoiAlign per level) gets the same Cast several times,
    which ONNX Runtime refuses as "two nodes with same node name". The copies compute the same tensor.
    """
    seen: set[bytes] = set()
    keep = []
    for node in model.graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            keep.append(node)
    dropped = len(model.graph.node) - len(keep)
    if dropped:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return dropped


def openvino_missing() -> str | None:
    """Why OpenVINO INT8 cannot be made here, or None when openvino and nncf import."""
    for name in ("openvino", "nncf"):
        try:
            __import__(name)
        except ImportError as exc:
            return f"{name} is not importable ({exc}); install the openvino extra"
    return None


def openvino_int8(
    model_path: Path, folder: Path, dataset, *, subset_size: int, ignored: Sequence[str]
) -> dict:
    """NNCF post-training INT8 (symmetric, PERFORMANCE preset) of the ONNX model into ``folder/model.xml``.

    ``nncf.quantize_with_accuracy_control`` is not used: it needs a validation function and a second
    data set, and reverts layers by its own ranking; the QDQ path already measures mAP on val and
    records which groups it keeps in float, and the same node names are passed here as ignored scope.
    """
    import nncf
    import openvino as ov

    model = ov.convert_model(str(model_path))
    ov_names = _openvino_names(model, ignored)
    # validate=True: a name that matches no op is an error, not a silently quantized layer
    ignored_scope = nncf.IgnoredScope(names=ov_names, validate=True) if ov_names else None
    kwargs = {"ignored_scope": ignored_scope} if ignored_scope is not None else {}
    quantized = nncf.quantize(
        model,
        dataset,
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=subset_size,
        model_type=None,
        **kwargs,
    )
    folder.mkdir(parents=True)
    ov.save_model(quantized, str(folder / "model.xml"), compress_to_fp16=False)
    fq = sum(1 for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize")
    return {
        "fake_quantize_ops": fq,
        "ignored": list(ignored),
        "ignored_openvino_ops": ov_names,
        "preset": "performance",
        "subset_size": subset_size,
    }


def _openvino_names(model, onnx_names: Sequence[str]) -> list[str]:
    """OpenVINO op names for ONNX node names.

    The ONNX frontend keeps a node's name for its op but splits a Conv with bias into
    ``<name>/WithoutBiases`` (the Convolution, which NNCF quantizes) plus an Add, so a plain name
    lookup matches nothing and NNCF would quantize the layers the QDQ loop kept in float.
    """
    wanted = set(onnx_names)
    return sorted(
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_friendly_name() in wanted or op.get_friendly_name().rsplit("/", 1)[0] in wanted
    )

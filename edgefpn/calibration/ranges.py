"""Streaming activation ranges for ONNX Runtime static quantization, cached by content.

ORT's ``quantize_static`` gathers every intermediate activation of every calibration image before
building histograms (entropy / percentile), which takes hundreds of GB on real data sets. Here the
same ORT calibrators are fed one batch per ``collect_data`` call: MinMax merges its running range
after each call, and the histogram calibrators fold each call into fixed-width histograms and drop
the activations, so memory is bounded by one batch's activations whatever the image count. The
result (a ``TensorsData``) is written as ORT's own calibration cache JSON, which ``quantize_static``
reads through ``calibration_cache_path`` without a data reader.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefpn.calibration.dataset import CalibrationSet, cache_key
from edgefpn.config import Config

__all__ = ["CalibrationResult", "calibrate", "calibration_method", "ort_op_types"]

ENTROPY_BINS = 512  # ORT's default of 128 leaves the KL search a single candidate threshold
ENTROPY_QUANTIZED_BINS = 128
PERCENTILE_BINS = 2048


@dataclass(frozen=True)
class CalibrationResult:
    cache: Path  # ORT calibration cache JSON (TensorsData)
    key: str
    reused: bool  # True: read from cache, no image was run
    seconds: float
    images: int


def calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[name]


def ort_op_types() -> list[str]:
    """The op types ``quantize_static`` quantizes (and so must have ranges for) in QDQ format."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def model_batch(model_path: Path) -> int:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 1


def calibrate(
    cfg: Config,
    model_path: Path,
    model_sha256: str,
    calib: CalibrationSet,
    cache_dir: Path,
    *,
    threads: int | None = None,
    log=print,
) -> CalibrationResult:
    """Ranges for every quantizable tensor of ``model_path``, from ``cache_dir`` when the key matches.

    The key covers the model's sha256, each calibration image (path + sha256), the preprocessing and
    the quantize settings, so a changed model or data set never reuses a stale cache.
    """
    key = cache_key(model_sha256, calib, cfg)
    cache = cache_dir / f"calib-{key[:32]}.json"
    if cache.is_file():
        log(f"[quantize] calibration cache hit: {cache}")
        return CalibrationResult(cache, key, True, 0.0, len(calib))
    t0 = time.perf_counter()
    ranges = _collect(cfg, model_path, calib, threads=threads or cfg.run.threads, log=log)
    seconds = time.perf_counter() - t0
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(ranges, cache)  # atomic (temp file + rename)
    log(f"[quantize] calibrated {len(calib)} images ({cfg.quantize.method}) in {seconds:.1f} s -> {cache}")
    return CalibrationResult(cache, key, False, seconds, len(calib))


def _collect(cfg: Config, model_path: Path, calib: CalibrationSet, *, threads: int, log):
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import create_calibrator

    q = cfg.quantize
    method = calibration_method(q.method)
    options = {
        "minmax": {"symmetric": False},
        "percentile": {"symmetric": True, "num_bins": PERCENTILE_BINS, "percentile": q.percentile},
        "entropy": {
            "symmetric": False,
            "num_bins": ENTROPY_BINS,
            "num_quantized_bins": ENTROPY_QUANTIZED_BINS,
        },
    }[q.method]
    batch = model_batch(model_path)
    with tempfile.TemporaryDirectory(prefix="edgefpn-calib-") as tmp:
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress to stdout
            calibrator = create_calibrator(
                model_path,
                ort_op_types(),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=method,
                extra_options=options,
            )
        # Same graph, but a fixed thread count (ORT's own session uses every core).
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.log_severity_level = 3
        calibrator.infer_session = ort.InferenceSession(
            calibrator.augmented_model_path, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        done = 0
        group: list[dict[str, np.ndarray]] = []
        per_call = max(1, q.batch_size // batch)
        for x in calib.iter_model_inputs(batch, batch_size=q.batch_size):
            group.append({"images": x})
            if len(group) == per_call:
                _feed(calibrator, group)
                done += len(group) * batch
                group = []
        if group:
            _feed(calibrator, group)
        with contextlib.redirect_stdout(io.StringIO()):
            ranges = calibrator.compute_data()
        del calibrator
    return ranges


class _ListReader:
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _feed(calibrator, feeds: list[dict[str, np.ndarray]]) -> None:
    """One ``collect_data`` call per batch: activations of this batch only are held, then folded in."""
    with contextlib.redirect_stdout(io.StringIO()):
        calibrator.collect_data(_ListReader(feeds))

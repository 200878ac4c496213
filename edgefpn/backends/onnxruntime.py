"""ONNX Runtime (CPU execution provider): the runner and its backend record.

Its engines are the ONNX files the export and quantize stages write; `edgefpn build` makes none.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.backends.base import Backend, BaseRunner
from edgefpn.errors import ModelFileError

_FILES = {
    "fp32": "model.onnx",
    "fp16": "model.fp16.onnx",
    "int8": "model.int8.ort.onnx",
}  # the ORT-CPU QDQ flavour (u8s8); model.int8.onnx is TensorRT's


class OnnxRuntimeRunner(BaseRunner):
    """Runs an ONNX file with a fixed intra-op thread count and sequential execution."""

    requires = ("onnxruntime",)
    install = "pip install onnxruntime"

    def __init__(self, spec, *, threads: int) -> None:
        super().__init__(spec, threads=threads)
        self._session: Any = None  # an onnxruntime.InferenceSession once loaded (untyped package)
        self._output_names: list[str] = []

    def _load(self) -> None:
        import onnxruntime as ort

        from edgefpn.onnx_guard import check_onnx_file

        check_onnx_file(self.spec.path)  # before ORT reads it or any external data it names
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle ORT threads spin by default and steal the cores from whichever engine runs next;
        # check and benchmark keep several engines open at once, so spinning is off for fairness.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(self.spec.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own untyped errors for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{self.spec.path}: ONNX Runtime cannot load it: {first}") from exc
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _io_shapes(self) -> dict[str, tuple]:
        """Every input's and output's shape as the loaded model declares it (a str for a named dim)."""
        return {a.name: tuple(a.shape) for a in [*self._session.get_inputs(), *self._session.get_outputs()]}

    def _unload(self) -> None:
        self._session = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._session.run(self._output_names, dict(feed))
        return dict(zip(self._output_names, outs, strict=True))


def _engine_path(run_dir: Path, precision: str) -> Path:
    return run_dir / _FILES[precision]


def _target_problem(engine: Mapping[str, Any], probe: Callable[[], tuple] | None = None) -> str | None:
    return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed"


def _not_made(cfg: Any, precision: str) -> str | None:
    """Why ``cfg`` makes no ONNX Runtime engine at ``precision`` (int8 and fp16 come from quantize)."""
    if precision != "fp32" and not cfg.quantize.enabled:
        return "quantize.enabled is false"
    if precision == "fp16" and not cfg.quantize.fp16:
        return "quantize.fp16 is false"
    return None


BACKEND = Backend(
    name="onnxruntime",
    runner=OnnxRuntimeRunner,
    precisions=("fp32", "fp16", "int8"),
    needs_gpu=False,
    file_kind="ONNX (.onnx)",
    engine_path=_engine_path,
    unavailable=OnnxRuntimeRunner.unavailable,
    target_problem=_target_problem,
    bundle_target=lambda precision, manifest: {},
    throughput="threads",
    rank=2,
    preferred=("int8", "fp32", "fp16"),
    not_made=_not_made,
    reads_onnx=True,
)

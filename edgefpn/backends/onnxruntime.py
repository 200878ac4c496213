"""ONNX Runtime runner (CPU execution provider)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgefpn.backends.base import EngineSpec
from edgefpn.errors import BackendUnavailable, ModelFileError


class OnnxRuntimeRunner:
    """Runs an ONNX file with a fixed intra-op thread count and sequential execution."""

    def __init__(self, spec: EngineSpec, *, threads: int) -> None:
        self.spec = spec
        self.threads = threads
        self._session = None
        self._output_names: list[str] = []

    @staticmethod
    def is_available() -> bool:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def __enter__(self) -> OnnxRuntimeRunner:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
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
        return self

    def io_shapes(self) -> dict[str, tuple]:
        """Every input's and output's shape as the loaded model declares it (a str for a named dim)."""
        if self._session is None:
            raise RuntimeError("OnnxRuntimeRunner.io_shapes called outside its context")
        return {a.name: tuple(a.shape) for a in [*self._session.get_inputs(), *self._session.get_outputs()]}

    def __exit__(self, *exc: object) -> None:
        self._session = None

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError("OnnxRuntimeRunner.infer called outside its context")
        outs = self._session.run(self._output_names, dict(feed))
        return dict(zip(self._output_names, outs, strict=True))

"""TensorRT compatibility lint for ONNX graphs: pure ``onnx`` + numpy, runs on any machine.

It catches, before a Jetson or a GPU box ever sees the file, the graph features that make TensorRT 10's
ONNX parser refuse a model or silently build something other than what was checked on the CPU:

* dynamic dimensions (edgefpn engines are static: one shape, one optimisation profile);
* an opset outside TensorRT 10's range, ops outside its ONNX operator support matrix, custom domains;
* INT64 where TensorRT rejects it (see :func:`edgefpn.lint.rules._lint_int64` for the exact rule);
* Q/DQ that is not TensorRT's scheme: symmetric INT8 (zero point 0), positive constant scales,
  weights per-channel along the output-channel axis, activations per-tensor.

Each finding names the node (or tensor) and the op, so the fix is a search away in Netron.

The parts: :mod:`.tables` (what TensorRT accepts, as data), :mod:`.rules` (one check per concern) and
:mod:`.findings` (the result type); this module is the entry point, :func:`lint_onnx`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgefpn.errors import ModelFileError
from edgefpn.lint.findings import Finding, errors
from edgefpn.lint.rules import (
    _constants,
    _lint_int64,
    _lint_ops,
    _lint_opset,
    _lint_qdq,
    _lint_shapes,
)
from edgefpn.lint.tables import TENSORRT_OPS, TENSORRT_OPSET_RANGE

__all__ = ["Finding", "TENSORRT_OPS", "TENSORRT_OPSET_RANGE", "errors", "lint_onnx"]


def lint_onnx(model: str | Path | Any) -> list[Finding]:
    """Lint an ONNX file (path) or ``onnx.ModelProto`` for TensorRT 10. Errors first, then warnings.

    Raises:
        ModelFileError: ``model`` is a path that cannot be read as ONNX.
    """
    import onnx

    if isinstance(model, str | Path):
        from edgefpn.onnx_guard import check_graph, check_onnx_file

        path = Path(model)
        check_onnx_file(path)  # size, protobuf and external-data checks before onnx reads a byte
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError, OSError, ... for a bad file
            raise ModelFileError(f"{path}: cannot read as ONNX: {type(exc).__name__}: {exc}") from None
        check_graph(model, path)
    graph = model.graph
    consts = _constants(graph)
    findings = [
        *_lint_opset(model),
        *_lint_shapes(graph),
        *_lint_ops(graph),
        *_lint_int64(graph, consts),
        *_lint_qdq(graph, consts),
    ]
    return sorted(findings, key=lambda f: f.severity != "error")

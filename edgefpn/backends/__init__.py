"""Backends: one Runner class per name, in a literal table; nothing is found by string magic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgefpn.backends.base import INPUT_NAME, BatchedRunner, EngineSpec, Runner, engine_batch
from edgefpn.backends.onnxruntime import OnnxRuntimeRunner
from edgefpn.backends.openvino import OpenVinoRunner
from edgefpn.backends.tensorrt import TensorRTRunner
from edgefpn.backends.torch import TorchRunner
from edgefpn.errors import BackendUnavailable


@dataclass(frozen=True)
class Capability:
    precisions: tuple[str, ...]
    needs_gpu: bool
    file_kind: str  # what the engine file is


RUNNERS: Mapping[str, type] = {
    "torch": TorchRunner,
    "onnxruntime": OnnxRuntimeRunner,
    "openvino": OpenVinoRunner,
    "tensorrt": TensorRTRunner,
}

CAPABILITIES: Mapping[str, Capability] = {
    "torch": Capability(("fp32",), needs_gpu=False, file_kind="edgefpn checkpoint (.pt)"),
    "onnxruntime": Capability(("fp32", "fp16", "int8"), needs_gpu=False, file_kind="ONNX (.onnx)"),
    "openvino": Capability(("fp32", "fp16", "int8"), needs_gpu=False, file_kind="OpenVINO IR folder (model.xml + model.bin)"),
    "tensorrt": Capability(("fp16", "int8"), needs_gpu=True, file_kind="TensorRT engine (.engine)"),
}


def open_runner(spec: EngineSpec, *, threads: int) -> Runner:
    """The runner for ``spec`` (not yet entered). Unknown or unavailable backends are clear errors."""
    try:
        cls = RUNNERS[spec.backend]
    except KeyError:
        raise BackendUnavailable(
            f"unknown backend {spec.backend!r}; valid backends: {', '.join(RUNNERS)}"
        ) from None
    if not cls.is_available():
        raise BackendUnavailable(f"backend {spec.backend!r} is not installed on this machine")
    # any number of images per call, whatever the engine's static batch (export.batch)
    return BatchedRunner(cls(spec, threads=threads))


__all__ = ["CAPABILITIES", "INPUT_NAME", "RUNNERS", "BatchedRunner", "EngineSpec", "Runner", "engine_batch",
           "open_runner"]

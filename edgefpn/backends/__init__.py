"""Backends: one :class:`Backend` record per target, in one literal table; nothing is found by string magic.

``BACKENDS`` feeds the build, check, package, benchmark and runtime code and the CLI's choices (through
its stdlib half, :mod:`edgefpn.backend_names`); none of them names a backend in a branch. Each record
lives in ``edgefpn/backends/<name>.py`` beside its runner, and imports its backend's package lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgefpn.backends import executorch as _executorch
from edgefpn.backends import onnxruntime as _onnxruntime
from edgefpn.backends import openvino as _openvino
from edgefpn.backends import tensorrt as _tensorrt
from edgefpn.backends import torch as _torch
from edgefpn.backends.base import (
    INPUT_NAME,
    Backend,
    BaseRunner,
    BatchedRunner,
    EngineSpec,
    Runner,
    engine_batch,
)
from edgefpn.backends.executorch import ExecuTorchRunner
from edgefpn.backends.onnxruntime import OnnxRuntimeRunner
from edgefpn.backends.openvino import OpenVinoRunner
from edgefpn.backends.tensorrt import TensorRTRunner
from edgefpn.backends.torch import TorchRunner
from edgefpn.errors import BackendUnavailable

BACKENDS: Mapping[str, Backend] = {
    "torch": _torch.BACKEND,
    "onnxruntime": _onnxruntime.BACKEND,
    "openvino": _openvino.BACKEND,
    "tensorrt": _tensorrt.BACKEND,
    "executorch": _executorch.BACKEND,
}


@dataclass(frozen=True)
class Capability:
    precisions: tuple[str, ...]
    needs_gpu: bool
    file_kind: str  # what the engine file is


# Views of BACKENDS. RUNNERS is a plain dict so that a test may swap one runner in for a run.
RUNNERS: dict[str, type[BaseRunner]] = {name: b.runner for name, b in BACKENDS.items()}
CAPABILITIES: Mapping[str, Capability] = {
    name: Capability(b.precisions, needs_gpu=b.needs_gpu, file_kind=b.file_kind)
    for name, b in BACKENDS.items()
}


def backend(name: str) -> Backend:
    """The record of backend ``name``; an unknown name is one line listing the valid ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}") from None


def open_runner(spec: EngineSpec, *, threads: int) -> Runner:
    """The runner for ``spec`` (not yet entered). Unknown or unavailable backends are clear errors."""
    backend(spec.backend)
    cls = RUNNERS[spec.backend]
    if not cls.is_available():
        raise BackendUnavailable(f"backend {spec.backend!r} is not installed on this machine")
    # any number of images per call, whatever the engine's static batch (export.batch)
    return BatchedRunner(cls(spec, threads=threads))


__all__ = [
    "BACKENDS",
    "CAPABILITIES",
    "INPUT_NAME",
    "RUNNERS",
    "Backend",
    "BaseRunner",
    "BatchedRunner",
    "EngineSpec",
    "ExecuTorchRunner",
    "OnnxRuntimeRunner",
    "OpenVinoRunner",
    "Runner",
    "TensorRTRunner",
    "TorchRunner",
    "backend",
    "engine_batch",
    "open_runner",
]

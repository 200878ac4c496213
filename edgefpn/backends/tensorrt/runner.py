"""The TensorRT runner: refuses an engine built for another TensorRT or GPU before deserializing it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgefpn.artifacts import read_manifest
from edgefpn.backends.base import BaseRunner, EngineSpec
from edgefpn.backends.tensorrt import machine
from edgefpn.backends.tensorrt.machine import INSTALL_HINT, compat_problem
from edgefpn.errors import ModelFileError


class TensorRTRunner(BaseRunner):
    """Runs a serialized engine on GPU 0 with torch CUDA tensors as I/O buffers (TensorRT 10 tensor API).

    Before deserializing, it reads the engine's manifest and refuses (``ModelFileError``) an engine
    built for another TensorRT version or compute capability (see :func:`compat_problem`).
    """

    requires = ("tensorrt", "torch")
    install = INSTALL_HINT

    def __init__(self, spec: EngineSpec, *, threads: int) -> None:
        super().__init__(spec, threads=threads)  # host threads are irrelevant to TensorRT
        # the engine, its execution context and CUDA stream once loaded (untyped packages)
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._inputs: dict[str, Any] = {}
        self._outputs: dict[str, Any] = {}

    @classmethod
    def unavailable(cls) -> str | None:
        reason = machine.unavailable_reason()
        return None if reason is None else f"tensorrt: {reason}"

    def _load(self) -> None:
        manifest = read_manifest(self.spec.path)
        if manifest is None:
            raise ModelFileError(
                f"{self.spec.path}: no manifest beside the engine; cannot check it was built for "
                "this TensorRT and GPU (rebuild with edgefpn build --target tensorrt)"
            )
        import tensorrt as trt
        import torch

        # the version of the module that will deserialize, not of whichever pip metadata is around
        problem = compat_problem(manifest, version=str(trt.__version__), device=machine.cuda_device())
        if problem is not None:
            raise ModelFileError(
                f"{self.spec.path}: {problem}; rebuild it here (edgefpn build --target tensorrt "
                "--force) or run its trtexec.sh"
            )

        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        built = manifest["tensorrt"]
        if built.get("version_compatible"):
            runtime.engine_host_code_allowed = True  # the lean runtime embedded in the engine
        if built.get("dla_core") is not None:
            runtime.DLA_core = int(built["dla_core"])
        self._engine = runtime.deserialize_cuda_engine(self.spec.path.read_bytes())
        if self._engine is None:
            raise ModelFileError(
                f"{self.spec.path}: TensorRT could not deserialize the engine (see the log above)"
            )
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelFileError(
                    f"{self.spec.path}: tensor {name} has a dynamic shape {shape}; edgefpn engines are static"
                )
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
            buf = torch.empty(shape, dtype=dtype, device="cuda")
            self._context.set_tensor_address(name, buf.data_ptr())
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs)[name] = buf

    def _io_shapes(self) -> dict[str, tuple]:
        """Every I/O tensor's shape in the deserialized engine (static: checked on load)."""
        return {name: tuple(buf.shape) for name, buf in [*self._inputs.items(), *self._outputs.items()]}

    def _unload(self) -> None:
        self._context = None
        self._engine = None
        self._inputs, self._outputs = {}, {}
        self._stream = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.cuda.stream(self._stream):
            for name, buf in self._inputs.items():
                buf.copy_(
                    torch.from_numpy(np.ascontiguousarray(feed[name])).to(buf.dtype), non_blocking=False
                )
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"{self.spec.path}: TensorRT execution failed")
            # float outputs as float32; an e2e engine's det_labels / num_dets stay integers
            outs = {
                name: (buf.float() if buf.is_floating_point() else buf).cpu()
                for name, buf in self._outputs.items()
            }
        self._stream.synchronize()
        return {name: t.numpy() for name, t in outs.items()}

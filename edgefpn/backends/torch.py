"""The PyTorch reference runner: the checkpoint, rebuilt, through the same export wrapper."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgefpn.backends.base import EngineSpec


class TorchRunner:
    """Runs the edgefpn checkpoint in PyTorch (FP32, eval mode); outputs match the ONNX names."""

    def __init__(self, spec: EngineSpec, *, threads: int) -> None:
        self.spec = spec
        self.threads = threads
        self._wrapper = None
        self._names: list[str] = []

    @staticmethod
    def is_available() -> bool:
        try:
            import torch  # noqa: F401
        except ImportError:
            return False
        return True

    def __enter__(self) -> TorchRunner:
        import torch

        from edgefpn.models.loading import wrapper_from_checkpoint

        torch.set_num_threads(self.threads)
        self._wrapper, self._names = wrapper_from_checkpoint(self.spec.path)
        return self

    def __exit__(self, *exc: object) -> None:
        self._wrapper = None

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self._wrapper is None:
            raise RuntimeError("TorchRunner.infer called outside its context")
        (images,) = feed.values()
        with torch.inference_mode():
            outs = self._wrapper(torch.from_numpy(np.ascontiguousarray(images)))
        return {name: t.numpy() for name, t in zip(self._names, outs, strict=True)}

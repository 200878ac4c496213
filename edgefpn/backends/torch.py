"""The PyTorch reference runner: the checkpoint, rebuilt, through the same export wrapper.

``torch`` is the check stage's reference, never built, checked or bundled (the device runtime has no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefpn.backends.base import Backend, BaseRunner, EngineSpec

if TYPE_CHECKING:  # torch is imported lazily: the device runtime has none
    from edgefpn.models.outputs import ExportModule


class TorchRunner(BaseRunner):
    """Runs the edgefpn checkpoint in PyTorch (FP32, eval mode); outputs match the ONNX names."""

    requires = ("torch",)
    install = "pip install 'edgefpn[pipeline]'"

    def __init__(self, spec: EngineSpec, *, threads: int) -> None:
        super().__init__(spec, threads=threads)
        self._wrapper: ExportModule | None = None
        self._names: list[str] = []

    def _load(self) -> None:
        import torch

        from edgefpn.models.loading import wrapper_from_checkpoint

        torch.set_num_threads(self.threads)
        self._wrapper, self._names = wrapper_from_checkpoint(self.spec.path)

    def _unload(self) -> None:
        self._wrapper = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        (images,) = feed.values()
        assert self._wrapper is not None  # BaseRunner calls _infer only between _load and _unload
        with torch.inference_mode():
            outs = self._wrapper(torch.from_numpy(np.ascontiguousarray(images)))
        return {name: t.numpy() for name, t in zip(self._names, outs, strict=True)}


def _target_problem(engine: Mapping[str, Any], probe: Callable[[], tuple] | None = None) -> str | None:
    return f"{engine['path']}: the PyTorch reference is not a device engine (the device runtime has no torch)"


BACKEND = Backend(
    name="torch",
    runner=TorchRunner,
    precisions=("fp32",),
    needs_gpu=False,
    file_kind="edgefpn checkpoint (.pt)",
    engine_path=lambda run_dir, precision: Path(run_dir) / "model.pt",
    unavailable=TorchRunner.unavailable,
    target_problem=_target_problem,
    bundle_target=lambda precision, manifest: {},
    throughput="serial",
    not_made=lambda cfg, precision: None,  # the train stage's model.pt
)

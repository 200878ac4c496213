"""ExecuTorch with its XNNPACK delegate: a ``.pte`` program from the checkpoint, and its runner.

ExecuTorch is PyTorch's on-device runtime (Android / iOS, ARM Linux, Jetson CPUs). Unlike the other
targets it does not start from the ONNX: the build rebuilds the export wrapper from ``model.pt``
(``edgefpn.models.loading``), captures it with ``torch.export`` at the run's static input shape,
lowers what XNNPACK supports to its delegate (``to_edge_transform_and_lower``; the rest runs on the
portable CPU kernels) and writes the serialized program, plain ``.pte`` bytes loadable by any
ExecuTorch runtime. Output names live in the sidecar manifest (a ``.pte`` method returns a list).

Here it runs through ExecuTorch's Python bindings, which take torch tensors, so running needs torch as
well as ``executorch`` (``pip install 'edgefpn[executorch]'``). fp32 only: XNNPACK's int8 path needs
PT2E quantization of the torch model, which edgefpn's ONNX-side calibration does not feed.
Opt in: ``build.targets`` and ``check.backends`` must name ``executorch``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.artifacts import read_manifest
from edgefpn.backends.base import Backend, BaseRunner, EngineSpec
from edgefpn.backends.building import BuildSource, engine_record
from edgefpn.errors import ExportError, ModelFileError

__all__ = ["BACKEND", "ExecuTorchRunner", "build", "engine_path", "to_executorch"]

_INSTALL = "pip install 'edgefpn[executorch]' (or: pip install executorch)"
PROGRAM = "model.pte"


class ExecuTorchRunner(BaseRunner):
    """Runs a ``.pte`` program's ``forward`` with XNNPACK's thread pool at ``threads`` threads."""

    requires = ("executorch.runtime",)
    install = _INSTALL

    def __init__(self, spec: EngineSpec, *, threads: int) -> None:
        super().__init__(spec, threads=threads)
        self._method = None
        self._names: list[str] = []
        self._shapes: dict[str, tuple] = {}

    def _load(self) -> None:
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        manifest = read_manifest(self.spec.path)
        if manifest is None or not isinstance(manifest.get("outputs"), list):
            raise ModelFileError(
                f"{self.spec.path}: no manifest naming the program's outputs beside it "
                "(rebuild with edgefpn build --target executorch)"
            )
        # one process-wide pool (ExecuTorch's own name says unsafe: not while another method runs)
        portable_lib._unsafe_reset_threadpool(self.threads)
        try:
            self._method = Runtime.get().load_program(self.spec.path).load_method("forward")
        except Exception as exc:  # the bindings raise RuntimeError / ValueError for a bad program
            raise ModelFileError(f"{self.spec.path}: ExecuTorch cannot load it: {_first_line(exc)}") from exc
        meta = self._method.metadata
        self._names = [str(n) for n in manifest["outputs"]]
        if meta.num_outputs() != len(self._names):
            raise ModelFileError(
                f"{self.spec.path}: the program returns {meta.num_outputs()} outputs, its "
                f"manifest names {len(self._names)}"
            )
        inp = manifest.get("input") or {}
        self._shapes = {str(inp.get("name", "images")): tuple(meta.input_tensor_meta(0).sizes())}
        self._shapes |= {n: tuple(meta.output_tensor_meta(i).sizes()) for i, n in enumerate(self._names)}

    def _io_shapes(self) -> dict[str, tuple]:
        return dict(self._shapes)

    def _unload(self) -> None:
        self._method = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        (images,) = feed.values()
        outs = self._method.execute([torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))])
        # copies: the method's memory-planned output buffers are reused by its next call
        return {name: np.array(t.numpy()) for name, t in zip(self._names, outs, strict=True)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def executorch_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError:
        return None


def to_executorch(wrapper: Any, example: Any, path: Path) -> None:
    """``torch.export`` ``wrapper`` at ``example``'s shape, lower to XNNPACK, write the ``.pte`` to ``path``.

    Raises:
        ExportError: torch.export or the lowering refused the model (the first line of why).
    """
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        exported = torch.export.export(wrapper, (example,), strict=False)
        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    except Exception as exc:  # torch.export / exir raise many untyped errors for unsupported graphs
        raise ExportError(f"ExecuTorch cannot lower the model: {_first_line(exc)}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(program.buffer)


# ----------------------------------------------------------------------------------------------
# the backend record


def engine_path(run_dir: Path, precision: str) -> Path:
    return run_dir / "executorch" / precision / PROGRAM


def unavailable_reason() -> str | None:
    if importlib.util.find_spec("executorch") is None:
        return f"the `executorch` Python package is not installed; install it with {_INSTALL}"
    return ExecuTorchRunner.unavailable()


def build(cfg: Any, run_dir: Path, precision: str, src: BuildSource, *, force: bool, **_: Any) -> Any:
    """``executorch/<precision>/model.pte`` from ``model.pt`` (``src``, the exported ONNX, gives the
    input spec the program must match)."""
    import torch

    from edgefpn.artifacts import atomic_output, require, up_to_date, write_manifest
    from edgefpn.config import config_hash
    from edgefpn.models.loading import wrapper_from_checkpoint
    from edgefpn.pipeline.common import log

    model = require(run_dir / "model.pt", "trained model")
    version = executorch_version() or "?"
    out = engine_path(run_dir, precision)
    settings = {"delegate": "xnnpack", "precision": precision, "torch": torch.__version__}
    chash = config_hash({"target": "executorch", "executorch": version, **settings})
    inputs = {"model": model.sha256, "onnx": src.sha256}
    if not force and (art := up_to_date(out, config_hash=chash, inputs=inputs)):
        log(f"[build] up to date: {out}")
        return art
    wrapper, names = wrapper_from_checkpoint(model.path)
    example = torch.zeros(src.input["shape"], dtype=torch.float32)
    log(
        f"[build] executorch-{precision}: torch.export + XNNPACK of {model.path.name} at {list(example.shape)}"
    )
    with atomic_output(out) as tmp:
        to_executorch(wrapper, example, tmp)
    return write_manifest(
        out,
        **engine_record(
            "executorch",
            precision,
            src,
            version,
            settings,
            config_hash=chash,
            inputs=inputs,
            outputs=list(names),
            source={"path": model.path.name, "sha256": model.sha256},
        ),
    )


def target_problem(engine: Mapping[str, Any], probe: Callable[[], tuple] | None = None) -> str | None:
    """The bindings that run a ``.pte`` here, and the torch they take tensors from. Imports nothing."""
    if importlib.util.find_spec("executorch") is None:
        return "executorch is not installed"
    if importlib.util.find_spec("torch") is None:
        return (
            f"{engine['path']}: ExecuTorch's Python runtime takes torch tensors, and torch is not installed"
        )
    return None


BACKEND = Backend(
    name="executorch",
    runner=ExecuTorchRunner,
    precisions=("fp32",),
    needs_gpu=False,
    file_kind="ExecuTorch program (.pte, XNNPACK delegate)",
    engine_path=engine_path,
    unavailable=lambda: unavailable_reason(),
    target_problem=target_problem,
    bundle_target=lambda precision, manifest: {"delegate": "xnnpack"},
    throughput="serial",  # one process-wide XNNPACK pool: one request at a time
    rank=3,
    preferred=("fp32",),
    build=build,
)

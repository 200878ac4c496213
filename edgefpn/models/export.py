"""ONNX export of any architecture's export wrapper (``edgefpn.models.registry.ARCHITECTURES``).

The wrapper advertises its outputs (``output_names()``, ``output_shapes()``); the exported graph must
match them exactly.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import cast

import onnx
import torch

from edgefpn.errors import ExportError
from edgefpn.models.outputs import ExportModule

__all__ = ["INPUT_NAME", "export_onnx"]

INPUT_NAME = "images"


def export_onnx(
    wrapper: ExportModule,
    path: str | os.PathLike[str],
    *,
    input_size: int | tuple[int, int],
    batch: int = 1,
    opset: int,
) -> None:
    """Export ``wrapper`` to a self-contained static-shape ONNX file, atomically.

    Uses the TorchScript (``dynamo=False``) exporter: with torch 2.13 the ``dynamo=True`` exporter needs
    ``onnxscript``, which is not a dependency. Both give the same compute nodes (Conv, GroupNorm as
    InstanceNormalization + Mul + Add, Resize) and numerics on this model, and the TorchScript one
    writes byte-identical files on repeated exports. It also leaves ``Identity`` nodes for the head
    weights shared across levels and computes the FPN ``Resize`` sizes through small
    ``Shape -> Slice -> Concat`` chains; onnxslim folds both. Every graph input and output is static.

    Args:
        wrapper: the model to export (exported in eval mode, as torch.onnx.export does by default).
        path: destination ``.onnx``; written to a temporary file beside it, then renamed into place.
        input_size: ``H`` (square) or ``(H, W)`` of the letterboxed input.
        batch: the static batch size ``N``.
        opset: ONNX opset, e.g. 17.

    Raises:
        ExportError: the exporter failed, or the file fails ``onnx.checker`` or the output contract.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    for name, value in (("input height", height), ("input width", width), ("batch", batch), ("opset", opset)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    path = Path(path)
    names = wrapper.output_names()
    expected = wrapper.output_shapes(batch=batch, input_size=(height, width))
    param = next(wrapper.parameters())
    dummy = torch.zeros(batch, 3, height, width, dtype=param.dtype, device=param.device)

    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo=True (see the docstring).
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
            # Static-shape wrappers read input sizes as Python ints on purpose (e.g. Faster R-CNN's
            # anchors and top-k counts): constants of the graph, which is what the tracer warns about.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            try:
                torch.onnx.export(
                    cast(torch.nn.Module, wrapper),  # every wrapper is one; ExportModule types its API
                    (dummy,),
                    tmp_name,
                    input_names=[INPUT_NAME],
                    output_names=names,
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
            except Exception as exc:  # the exporter raises many unrelated types
                raise ExportError(f"{path}: torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
        model = onnx.load(tmp_name)
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ExportError(f"{path}: exported graph fails onnx.checker: {exc}") from exc
        _check_contract(path, model, expected)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def _check_contract(path: Path, model: onnx.ModelProto, expected: dict[str, tuple[int, ...]]) -> None:
    got = {out.name: _static_shape(out) for out in model.graph.output}
    if list(got) != list(expected):
        raise ExportError(f"{path}: exported outputs {list(got)} differ from the contract {list(expected)}")
    wrong = [
        f"{name} {list(got[name])} vs {list(shape)}" for name, shape in expected.items() if got[name] != shape
    ]
    if wrong:
        raise ExportError(
            f"{path}: {len(wrong)} output shapes differ from the contract ({'; '.join(wrong[:3])})"
        )

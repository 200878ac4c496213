"""The export wrapper: a detector as a fixed tuple of raw per-level head tensors, and its ONNX export.

Output contract (docs/ARCHITECTURE.md), for levels p3..p7 in this order:
``cls_p*`` ``[N, C, H/s, W/s]`` raw logits, ``box_p*`` ``[N, 4, H/s, W/s]`` ReLU'd ltrb distances in
units of the level's stride, ``ctr_p*`` ``[N, 1, H/s, W/s]`` raw centerness logits. ``H/s`` rounds up,
as every stride-2 conv in the network does.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.detection import FCOS

from edgefpn.errors import ExportError
from edgefpn.models.backbones import level_stride
from edgefpn.models.fcos import FCOS_LEVELS

__all__ = ["INPUT_NAME", "ExportWrapper", "export_onnx", "output_names", "output_shapes"]

INPUT_NAME = "images"
_KINDS = ("cls", "box", "ctr")


def output_names(levels: Sequence[str] = FCOS_LEVELS) -> list[str]:
    """``["cls_p3", ..., "cls_p7", "box_p3", ..., "ctr_p7"]``: the wrapper's outputs, in order."""
    return [f"{kind}_{level}" for kind in _KINDS for level in levels]


def _level_size(size: int, stride: int) -> int:
    # Each stride-2 conv (k3 p1, k7 p3, k1 p0) and the stem max-pool maps n -> ceil(n / 2).
    for _ in range(stride.bit_length() - 1):
        size = -(-size // 2)
    return size


def output_shapes(
    *,
    batch: int,
    input_size: int | tuple[int, int],
    num_classes: int,
    levels: Sequence[str] = FCOS_LEVELS,
) -> dict[str, tuple[int, ...]]:
    """The static shape of every output for an input ``[batch, 3, H, W]``, keyed by output name.

    Args:
        batch: images per batch ``N``.
        input_size: ``H`` (square) or ``(H, W)`` of the letterboxed input.
        num_classes: ``C``.
        levels: the pyramid levels, ``p3``..``p7`` by default.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    channels = {"cls": num_classes, "box": 4, "ctr": 1}
    shapes: dict[str, tuple[int, ...]] = {}
    for kind in _KINDS:
        for level in levels:
            stride = level_stride(level)
            shapes[f"{kind}_{level}"] = (
                batch,
                channels[kind],
                _level_size(height, stride),
                _level_size(width, stride),
            )
    return shapes


def _run_tower(tower: nn.Sequential, x: Tensor) -> Tensor:
    """``tower(x)``, except that GroupNorm runs as ``torch.group_norm`` with the layer's own parameters.

    ``F.group_norm`` refuses a group that holds a single value, which happens with 32 channels (one per
    group) on a 1x1 level at batch 1, e.g. P7 of a 128x128 input. The result is well defined (the affine
    bias) and the op itself computes it; same numbers, same exported ONNX node.
    """
    for layer in tower:
        if isinstance(layer, nn.GroupNorm):
            x = torch.group_norm(x, layer.num_groups, layer.weight, layer.bias, layer.eps)
        else:
            x = layer(x)
    return x


class ExportWrapper(nn.Module):
    """Runs an FCOS model's backbone and head and returns the raw per-level tensors as one flat tuple.

    It calls the head's own submodules per level and skips torchvision's flatten / concat / decode /
    NMS, so the graph has no data-dependent control flow and only static shapes. The tuple layout is
    ``output_names(self.levels)`` whatever ``training`` says (BatchNorm still follows the mode, so
    export an ``eval()`` model).
    """

    def __init__(self, model: FCOS) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.levels: tuple[str, ...] = tuple(model.backbone.output_shape())
        self.num_classes: int = model.head.classification_head.num_classes

    def output_names(self) -> list[str]:
        """The names of ``forward``'s outputs, in order."""
        return output_names(self.levels)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:  # images: [N, 3, H, W]
        features = self.backbone(images)
        cls_head = self.head.classification_head
        reg_head = self.head.regression_head
        cls_out: list[Tensor] = []
        box_out: list[Tensor] = []
        ctr_out: list[Tensor] = []
        for level in self.levels:
            feature = features[level]  # [N, F, H/s, W/s]
            cls_out.append(cls_head.cls_logits(_run_tower(cls_head.conv, feature)))  # [N, C, H/s, W/s]
            reg_feature = _run_tower(reg_head.conv, feature)  # [N, F, H/s, W/s]
            box_out.append(F.relu(reg_head.bbox_reg(reg_feature)))  # [N, 4, H/s, W/s]
            ctr_out.append(reg_head.bbox_ctrness(reg_feature))  # [N, 1, H/s, W/s]
        return (*cls_out, *box_out, *ctr_out)


def export_onnx(
    wrapper: ExportWrapper,
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
    expected = output_shapes(
        batch=batch, input_size=(height, width), num_classes=wrapper.num_classes, levels=wrapper.levels
    )
    param = next(wrapper.parameters())
    dummy = torch.zeros(batch, 3, height, width, dtype=param.dtype, device=param.device)

    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo=True (see the docstring).
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
            try:
                torch.onnx.export(
                    wrapper,
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

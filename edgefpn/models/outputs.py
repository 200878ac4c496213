"""What every architecture's export wrapper shares: the protocol it follows and level-size helpers.

An export wrapper runs a detector's backbone and head and returns a fixed tuple of raw tensors, no
decode, no NMS, so the graph has only static shapes. It advertises its outputs (names in order and
static shapes), and ``export_onnx`` checks the exported graph against them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

import torch
from torch import Tensor, nn

from edgefpn.models.backbones import level_stride

__all__ = [
    "ExportModule",
    "PerLevelExportWrapper",
    "level_size",
    "per_level_output_names",
    "per_level_output_shapes",
    "run_tower",
]


@runtime_checkable
class ExportModule(Protocol):
    """The export wrapper of one architecture (an ``nn.Module``).

    Attributes:
        levels: the pyramid levels its per-level outputs cover, e.g. ``("p3", ..., "p7")``.
        num_classes: ``C``, the classes of its classification outputs.
    """

    levels: tuple[str, ...]
    num_classes: int

    def output_names(self) -> list[str]:
        """The names of ``forward``'s outputs, in order (per-level ones are ``<branch>_p<k>``)."""
        ...

    def output_shapes(self, *, batch: int, input_size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """The static shape of every output for an input ``[batch, 3, H, W]``, in output order."""
        ...

    def __call__(self, images: Tensor) -> tuple[Tensor, ...]: ...

    # the nn.Module methods edgefpn calls on a wrapper
    def eval(self) -> ExportModule: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


def per_level_output_names(branches: Sequence[str], levels: Sequence[str]) -> list[str]:
    """``<branch>_<level>``, branch-major: ``["cls_p3", ..., "cls_p7", "box_p3", ..., "box_p7"]``."""
    return [f"{branch}_{level}" for branch in branches for level in levels]


def per_level_output_shapes(
    channels: Mapping[str, int], *, batch: int, input_size: int | tuple[int, int], levels: Sequence[str]
) -> dict[str, tuple[int, ...]]:
    """``[batch, channels[branch], H_l, W_l]`` for every ``<branch>_<level>`` output, in output order.

    Args:
        channels: each branch's channel count, in output order (``{"cls": C, "box": 4}``).
        input_size: ``H`` (square) or ``(H, W)`` of the letterboxed input.
        levels: the pyramid levels; ``pK`` has stride ``2**K``.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    return {
        f"{branch}_{level}": (
            batch,
            c,
            level_size(height, level_stride(level)),
            level_size(width, level_stride(level)),
        )
        for branch, c in channels.items()
        for level in levels
    }


class PerLevelExportWrapper(nn.Module):
    """Base of the one-stage export wrappers (FCOS, RetinaNet): a torchvision detector's backbone and head,
    returning one ``[N, channels, H_l, W_l]`` map per branch and level as a flat, branch-major tuple.

    Subclasses set ``branches`` and implement ``branch_channels`` and ``forward``; the outputs they
    advertise follow from those two, so names, shapes and ``forward`` cannot drift apart per arch.
    """

    branches: ClassVar[tuple[str, ...]]

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # Any: nn.Module types its attributes as Tensor | Module, and torchvision's heads are untyped
        self.backbone: Any = cast(Any, model.backbone)
        self.head: Any = cast(Any, model.head)
        self.levels: tuple[str, ...] = tuple(self.backbone.output_shape())
        self.num_classes: int = self.head.classification_head.num_classes

    def branch_channels(self) -> dict[str, int]:
        """Each branch's output channels, in ``branches`` order."""
        raise NotImplementedError

    def output_names(self) -> list[str]:
        """The names of ``forward``'s outputs, in order."""
        return per_level_output_names(self.branches, self.levels)

    def output_shapes(self, *, batch: int, input_size: int | tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """The static shape of every output for an input ``[batch, 3, H, W]``, in output order."""
        return per_level_output_shapes(
            self.branch_channels(), batch=batch, input_size=input_size, levels=self.levels
        )


def level_size(size: int, stride: int) -> int:
    """The side of a stride-``stride`` feature map for an input side ``size``: ``size`` halved, rounding up,
    once per factor of 2 (each stride-2 conv (k3 p1, k7 p3, k1 p0) and the stem max-pool maps
    n -> ceil(n / 2))."""
    for _ in range(stride.bit_length() - 1):
        size = -(-size // 2)
    return size


def run_tower(tower: nn.Sequential, x: Tensor) -> Tensor:
    """``tower(x)``, except that GroupNorm runs as ``torch.group_norm`` with the layer's own parameters.

    ``F.group_norm`` refuses a group that holds a single value, which happens with 32 channels (one per
    group) on a 1x1 level at batch 1, e.g. P7 of a 128x128 input. The result is well defined (the affine
    bias) and the op itself computes it; same numbers, same exported ONNX node.
    """
    for layer in tower:
        if isinstance(layer, nn.GroupNorm):
            x = torch.group_norm(x, layer.num_groups, layer.weight, layer.bias, layer.eps)
        elif isinstance(layer, nn.Sequential):  # e.g. Conv2dNormActivation blocks of RetinaNet's heads
            x = run_tower(layer, x)
        else:
            x = layer(x)
    return x

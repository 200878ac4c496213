"""What every architecture's export wrapper shares: the protocol it follows and level-size helpers.

An export wrapper runs a detector's backbone and head and returns a fixed tuple of raw tensors, no
decode, no NMS, so the graph has only static shapes. It advertises its outputs (names in order and
static shapes), and ``export_onnx`` checks the exported graph against them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["ExportModule", "level_size", "run_tower"]


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


def level_size(size: int, stride: int) -> int:
    """The side of a stride-``stride`` feature map for an input side ``size``: ``size`` halved, rounding up,
    once per factor of 2 (each stride-2 conv (k3 p1, k7 p3, k1 p0) and the stem max-pool maps n -> ceil(n / 2))."""
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

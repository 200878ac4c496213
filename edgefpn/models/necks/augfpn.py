"""AugFPN (Guo et al., "AugFPN: Improving Multi-scale Feature Learning for Object Detection", CVPR 2020).

Two of the paper's three parts live here, on top of torchvision's ``FeaturePyramidNetwork`` (whose
``inner_blocks`` / ``layer_blocks`` / ``extra_blocks`` layout we keep, so an FPN state dict is a subset
of an AugFPN one):

* **Residual Feature Augmentation** (:class:`ResidualFeatureAugmentation`): C5 is average-pooled at
  several ratios of its own size (ratio-invariant adaptive pooling), each result goes through a 1x1
  conv to the FPN width and is upsampled back; learned spatial weights (Adaptive Spatial Fusion)
  merge the branches, and the sum is added to the top lateral M5 before the top-down path.
* **Consistent Supervision** support: in training, :class:`AugFPN` can hand out the pre-fusion
  pyramid (the raw 1x1 lateral outputs M_i, plus the extra levels computed from them) so that the
  detector applies its own head and loss to it (:mod:`edgefpn.models.necks.supervision`).

The third part, Soft RoI Selection, belongs to the Faster R-CNN RoI stage.

Export: the reference pools with ``adaptive_avg_pool2d`` to sizes that do not divide the input, which
the ONNX exporter refuses. Adaptive average pooling is linear and separable, so here it is two constant
matrices built from the static input size: ``pooled = A_h @ x @ A_w^T`` (two ONNX ``MatMul``), exactly
torch's windows ``[floor(i*H/h), ceil((i+1)*H/h))``. Everything else is Conv, Resize, Sigmoid, Mul and
Add, which ONNX Runtime, OpenVINO and TensorRT run with static shapes on any device.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork

__all__ = [
    "DEFAULT_POOL_RATIOS",
    "AdaptiveSpatialFusion",
    "AugFPN",
    "ResidualFeatureAugmentation",
    "StaticAdaptiveAvgPool2d",
    "adaptive_pool_matrix",
]

DEFAULT_POOL_RATIOS = (0.1, 0.2, 0.3)  # the paper's ratios of C5's size


@functools.lru_cache(maxsize=64)
def _pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    # numpy, not torch: built inside a trace, torch ops would be recorded (as ScatterND chains);
    # a numpy array becomes one constant initializer
    rows = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -(-((i + 1) * in_size) // out_size)  # ceil
        rows[i, start:end] = 1.0 / (end - start)
    rows = rows.astype(np.float32)
    rows.flags.writeable = False  # shared by the cache
    return rows


@contextlib.contextmanager
def _static_by_design() -> Iterator[None]:
    """Silence the tracer's "this becomes a constant" warnings around sizes and pooling matrices.

    While tracing for ONNX export, sizes are tensors; ``int()`` on them and ``torch.tensor`` of the
    pooling matrices make the tracer warn that the values become constants of the graph. Here that is
    the point: the exported graph has static shapes by contract (docs/ARCHITECTURE.md).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _static_size(x: Tensor) -> tuple[int, int]:
    """``(H, W)`` of ``x`` as Python ints (constants in a trace)."""
    with _static_by_design():
        return int(x.shape[-2]), int(x.shape[-1])


def _matrix(in_size: int, out_size: int, like: Tensor) -> Tensor:
    """The pooling matrix as a tensor like ``like`` (a constant initializer in a trace)."""
    with _static_by_design():
        return torch.tensor(_pool_matrix(in_size, out_size), dtype=like.dtype, device=like.device)


def adaptive_pool_matrix(in_size: int, out_size: int) -> Tensor:
    """``[out_size, in_size]`` averaging matrix with torch's adaptive-pooling windows.

    Row ``i`` averages inputs ``floor(i * in / out)`` .. ``ceil((i + 1) * in / out) - 1``, the windows of
    ``F.adaptive_avg_pool1d``; windows overlap when ``out`` does not divide ``in``.
    """
    for name, value in (("in_size", in_size), ("out_size", out_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if out_size > in_size:
        raise ValueError(f"out_size must be <= in_size, got out_size={out_size}, in_size={in_size}")
    return torch.from_numpy(_pool_matrix(in_size, out_size).copy())


class StaticAdaptiveAvgPool2d(nn.Module):
    """``F.adaptive_avg_pool2d`` to ``ratio`` of the input's size, as two matrix products.

    The output size is ``max(1, int(ratio * H))`` x ``max(1, int(ratio * W))`` (the paper's rule). The
    pooling matrices depend only on the input's static size, so they are built in Python from it and
    become constants of a traced/exported graph: no data-dependent shapes, no ``AdaptiveAvgPool`` op.
    """

    def __init__(self, ratio: float) -> None:
        super().__init__()
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        self.ratio = float(ratio)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return max(1, int(self.ratio * height)), max(1, int(self.ratio * width))

    def forward(self, x: Tensor) -> Tensor:  # x: [N, C, H, W]
        height, width = _static_size(x)
        out_h, out_w = self.output_size(height, width)
        rows = _matrix(height, out_h, x)  # [h, H]
        cols = _matrix(width, out_w, x).t()  # [W, w]
        return torch.matmul(torch.matmul(rows, x), cols)  # [N, C, h, w]

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"


class AdaptiveSpatialFusion(nn.Module):
    """The paper's Adaptive Spatial Fusion: a learned spatial weight map per branch, then a weighted sum.

    ``attention`` maps the concatenated branches ``[N, B*C, H, W]`` through a 1x1 conv (to ``hidden``
    channels), ReLU and a 3x3 conv to ``B`` maps; a sigmoid makes them weights (as the reference does:
    each branch is gated on its own rather than the branches competing through a softmax).

    Args:
        channels: channels ``C`` of every branch.
        branches: number of branches ``B``.
        hidden: width of the 1x1 conv (default ``C``, the paper's).
    """

    def __init__(self, channels: int, branches: int, *, hidden: int | None = None) -> None:
        super().__init__()
        hidden = channels if hidden is None else hidden
        for name, value in (("channels", channels), ("branches", branches), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.branches = branches
        self.attention = nn.Sequential(
            nn.Conv2d(channels * branches, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, branches, 3, padding=1),
        )

    def forward(self, branches: Sequence[Tensor]) -> Tensor:  # B x [N, C, H, W]
        if len(branches) != self.branches:
            raise ValueError(f"expected {self.branches} branches, got {len(branches)}")
        weights = torch.sigmoid(self.attention(torch.cat(list(branches), dim=1)))  # [N, B, H, W]
        fused = branches[0] * weights[:, 0:1]
        for i in range(1, len(branches)):
            fused = fused + branches[i] * weights[:, i : i + 1]
        return fused  # [N, C, H, W]


class ResidualFeatureAugmentation(nn.Module):
    """Ratio-invariant context from C5, fused by learned spatial weights (the paper's RFA + ASF).

    Args:
        in_channels: channels of C5.
        out_channels: the FPN width.
        pool_ratios: one branch per ratio of C5's size (paper: 0.1, 0.2, 0.3).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, pool_ratios: Sequence[float] = DEFAULT_POOL_RATIOS
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        ratios = tuple(pool_ratios)
        if not ratios:
            raise ValueError(f"pool_ratios must be non-empty, got {pool_ratios!r}")
        self.pools = nn.ModuleList(StaticAdaptiveAvgPool2d(r) for r in ratios)
        self.reduce = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in ratios)
        self.fuse = AdaptiveSpatialFusion(out_channels, len(ratios))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)  # torchvision's FPN initialisation
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, c5: Tensor) -> Tensor:  # c5: [N, C5, H, W]
        size = _static_size(c5)
        # pool before the 1x1 conv: both are linear (the pooling rows sum to 1), so the order does
        # not change the result, and the conv then runs on a map 10x-100x smaller
        branches = [
            F.interpolate(reduce(pool(c5)), size=size, mode="bilinear", align_corners=False)
            for pool, reduce in zip(self.pools, self.reduce, strict=True)
        ]  # each [N, F, H, W]
        return self.fuse(branches)  # [N, F, H, W]


class AugFPN(FeaturePyramidNetwork):
    """torchvision's FPN with Residual Feature Augmentation on the top lateral.

    The state-dict layout is torchvision's FPN (``inner_blocks``, ``layer_blocks``, ``extra_blocks``)
    plus ``rfa.*``. In training, :meth:`keep_laterals` collects the pre-fusion pyramid of each forward
    pass for Consistent Supervision; in eval and export the forward pass never builds it.

    Args:
        in_channels_list: channels of the backbone levels, lowest level first (the last is C5).
        out_channels: the FPN width.
        extra_blocks: torchvision's extra levels (``LastLevelP6P7``, ``LastLevelMaxPool``) or ``None``.
        pool_ratios: RFA pooling ratios of C5's size.
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int,
        *,
        extra_blocks: ExtraFPNBlock | None = None,
        pool_ratios: Sequence[float] = DEFAULT_POOL_RATIOS,
    ) -> None:
        super().__init__(list(in_channels_list), out_channels, extra_blocks=extra_blocks)
        self.rfa = ResidualFeatureAugmentation(in_channels_list[-1], out_channels, pool_ratios=pool_ratios)
        self._kept: list[OrderedDict[str, Tensor]] | None = None

    @classmethod
    def from_fpn(
        cls, fpn: FeaturePyramidNetwork, *, pool_ratios: Sequence[float] = DEFAULT_POOL_RATIOS
    ) -> AugFPN:
        """An AugFPN that takes over ``fpn``'s own lateral, output and extra blocks (weights included).

        Only the RFA is new, so a detector built with either neck from one seed starts from the same
        FPN weights.
        """
        if type(fpn) is not FeaturePyramidNetwork:
            raise ValueError(f"expected torchvision's FeaturePyramidNetwork, got {type(fpn).__name__}")
        # Conv2dNormActivation -> its Conv2d (a norm layer after it, as in Faster R-CNN v2, moves over too)
        convs = [block[0] for block in fpn.inner_blocks]
        out_channels = convs[0].out_channels
        # The new modules draw from a forked RNG, so whatever is built after the neck (the head)
        # gets the same initial weights with either neck for one seed.
        with torch.random.fork_rng(devices=[]):
            neck = cls([c.in_channels for c in convs], out_channels, pool_ratios=pool_ratios)
        neck.inner_blocks, neck.layer_blocks, neck.extra_blocks = (
            fpn.inner_blocks,
            fpn.layer_blocks,
            fpn.extra_blocks,
        )
        return neck

    @contextlib.contextmanager
    def keep_laterals(self) -> Iterator[list[OrderedDict[str, Tensor]]]:
        """Within the block, each forward pass appends its pre-fusion pyramid to the yielded list.

        The pyramid has the output's level names: the raw 1x1 laterals M_i (before RFA and before any
        top-down sum) and the extra levels computed from them by the same ``extra_blocks``.
        """
        kept: list[OrderedDict[str, Tensor]] = []
        self._kept = kept
        try:
            yield kept
        finally:
            self._kept = None

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:  # {"c3": [N, C3, H/8, W/8], ...}
        names = list(x.keys())
        inputs = list(x.values())
        laterals = [self.get_result_from_inner_blocks(feature, i) for i, feature in enumerate(inputs)]
        last_inner = laterals[-1] + self.rfa(inputs[-1])  # M5 + RFA, [N, F, H/32, W/32]
        results = [self.get_result_from_layer_blocks(last_inner, -1)]
        for idx in range(len(inputs) - 2, -1, -1):
            top_down = F.interpolate(last_inner, size=laterals[idx].shape[-2:], mode="nearest")
            last_inner = laterals[idx] + top_down
            results.insert(0, self.get_result_from_layer_blocks(last_inner, idx))
        out_names = list(names)
        if self.extra_blocks is not None:
            results, out_names = self.extra_blocks(results, inputs, out_names)
        if self._kept is not None:
            self._kept.append(self._pre_fusion_pyramid(laterals, inputs, names))
        return OrderedDict(zip(out_names, results, strict=True))

    def _pre_fusion_pyramid(
        self, laterals: list[Tensor], inputs: list[Tensor], names: list[str]
    ) -> OrderedDict[str, Tensor]:
        pyramid, pyramid_names = list(laterals), list(names)
        if self.extra_blocks is not None:
            pyramid, pyramid_names = self.extra_blocks(pyramid, inputs, pyramid_names)
        return OrderedDict(zip(pyramid_names, pyramid, strict=True))

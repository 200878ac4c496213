"""AugFPN's Consistent Supervision: the detector's own loss, applied to the pre-fusion pyramid too.

The paper attaches the detection head and loss to the lateral features M_i before they are fused in
the top-down path, with shared head weights, and adds the result to the main loss with a weight. Here
:class:`ConsistentSupervision` is a mixin for torchvision's detectors: in training it runs the
detector's own ``forward`` twice, once on the neck's outputs and once on the pre-fusion pyramid that
:class:`~edgefpn.models.necks.augfpn.AugFPN` kept during the first pass (the backbone trunk is not
run again), and returns both loss dicts, the second scaled by ``aux_loss_weight`` and prefixed
``aux_``. Every part of the detector (FCOS/RetinaNet heads and their target assignment; Faster
R-CNN's RPN and RoI heads) thus supervises the laterals exactly as it supervises the outputs.

The auxiliary pass adds no parameters and runs only in training: eval, the export wrapper and the
exported ONNX see the plain detector, and the state dict is the same with or without it.

Weight: 0.25 (:data:`AUX_LOSS_WEIGHT`). The paper weights the auxiliary terms below the main loss;
0.25 is our choice for the small from-scratch budgets here, not a value checked against the paper.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet

from edgefpn.models.necks.augfpn import AugFPN

__all__ = ["AUX_LOSS_WEIGHT", "AugFCOS", "AugRetinaNet", "ConsistentSupervision"]

AUX_LOSS_WEIGHT = 0.25


class _Replay(nn.Module):
    """Stands in for the backbone during the auxiliary pass: returns the kept pyramid."""

    def __init__(self, pyramid: OrderedDict[str, Tensor], out_channels: int) -> None:
        super().__init__()
        self.pyramid = pyramid
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.pyramid


# for the type checker the mixin is a Module (its super() is the detector's); at run time a plain mixin
if TYPE_CHECKING:
    _MixinBase = nn.Module
else:
    _MixinBase = object


class ConsistentSupervision(_MixinBase):
    """Mixin placed before a torchvision detector class: adds the auxiliary losses in training.

    Args:
        aux_loss_weight: weight of the auxiliary losses; 0 turns Consistent Supervision off.
        *args, **kwargs: the detector's own constructor arguments.
    """

    backbone: Any  # the detector's (torchvision's detectors are untyped)

    def __init__(self, *args: Any, aux_loss_weight: float = AUX_LOSS_WEIGHT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if (
            isinstance(aux_loss_weight, bool)
            or not isinstance(aux_loss_weight, int | float)
            or aux_loss_weight < 0
        ):
            raise ValueError(f"aux_loss_weight must be a number >= 0, got {aux_loss_weight!r}")
        if not isinstance(getattr(self.backbone, "fpn", None), AugFPN):
            raise ValueError(
                f"{type(self).__name__} needs a backbone whose .fpn is an AugFPN, "
                f"got {type(getattr(self.backbone, 'fpn', None)).__name__}"
            )
        self.aux_loss_weight = float(aux_loss_weight)

    def forward(self, images: Any, targets: Any = None) -> Any:
        if not (self.training and self.aux_loss_weight > 0):
            return super().forward(images, targets)
        neck: AugFPN = self.backbone.fpn
        with neck.keep_laterals() as kept:
            losses = super().forward(images, targets)
        if len(kept) != 1:
            raise RuntimeError(f"expected one pre-fusion pyramid from the training pass, got {len(kept)}")
        backbone = self.backbone
        self.backbone = _Replay(kept[0], backbone.out_channels)
        try:
            aux = super().forward(images, targets)
        finally:
            self.backbone = backbone
        return {**losses, **{f"aux_{name}": self.aux_loss_weight * value for name, value in aux.items()}}


class AugFCOS(ConsistentSupervision, FCOS):
    """torchvision's FCOS on an AugFPN neck, with Consistent Supervision in training."""


class AugRetinaNet(ConsistentSupervision, RetinaNet):
    """torchvision's RetinaNet on an AugFPN neck, with Consistent Supervision in training."""

"""Necks: torchvision's FPN (``fpn``, the default) and AugFPN (``augfpn``), chosen by ``model.neck``.

A detector builder builds its ``BackboneWithFPN`` as usual, then calls :func:`attach_neck` and
instantiates :func:`detector_class` of its torchvision class (:func:`build_detector` does that and the
rest every builder repeats); with ``neck="fpn"`` both are no-ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from torch import nn
from torchvision.models.detection import FCOS, RetinaNet

from edgefpn.models.necks.augfpn import (
    DEFAULT_POOL_RATIOS,
    AdaptiveSpatialFusion,
    AugFPN,
    ResidualFeatureAugmentation,
    StaticAdaptiveAvgPool2d,
    adaptive_pool_matrix,
)
from edgefpn.models.necks.soft_roi import SoftRoISelection, StaticRoIPool
from edgefpn.models.necks.supervision import (
    AUX_LOSS_WEIGHT,
    AugFCOS,
    AugRetinaNet,
    ConsistentSupervision,
)
from edgefpn.models.transform import IdentityTransform

__all__ = [
    "AUX_LOSS_WEIGHT",
    "DEFAULT_POOL_RATIOS",
    "NECKS",
    "AdaptiveSpatialFusion",
    "AugFCOS",
    "AugFPN",
    "AugRetinaNet",
    "ConsistentSupervision",
    "ResidualFeatureAugmentation",
    "SoftRoISelection",
    "StaticAdaptiveAvgPool2d",
    "StaticRoIPool",
    "adaptive_pool_matrix",
    "attach_neck",
    "build_detector",
    "detector_class",
]

NECKS = ("fpn", "augfpn")

# torchvision detector -> the same detector with Consistent Supervision (used with neck="augfpn");
# faster_rcnn builds its own (AugEdgeFasterRCNN: the mixin on its 0..K-1-label EdgeFasterRCNN)
_SUPERVISED: Mapping[type[nn.Module], type[nn.Module]] = {
    FCOS: AugFCOS,
    RetinaNet: AugRetinaNet,
}

_M = TypeVar("_M", bound=nn.Module)


def _check(neck: str) -> None:
    if neck not in NECKS:
        raise ValueError(f"unknown neck {neck!r}; valid names: {', '.join(NECKS)}")


def attach_neck(backbone: _M, *, neck: str) -> _M:
    """``backbone`` (a torchvision ``BackboneWithFPN``) with its ``.fpn`` turned into ``neck``.

    ``"fpn"`` leaves it as is; ``"augfpn"`` replaces ``.fpn`` by an :class:`AugFPN` that keeps the FPN's
    own blocks and weights and adds Residual Feature Augmentation.
    """
    _check(neck)
    if neck == "augfpn":
        backbone.fpn = AugFPN.from_fpn(backbone.fpn)
    return backbone


def detector_class(base: type[_M], *, neck: str) -> type[_M]:
    """The class to instantiate for the torchvision detector ``base`` with ``neck``."""
    _check(neck)
    if neck == "fpn":
        return base
    if base not in _SUPERVISED:
        raise ValueError(
            f"no AugFPN variant of {base.__name__}; known: {', '.join(c.__name__ for c in _SUPERVISED)}"
        )
    return _SUPERVISED[base]  # type: ignore[return-value]  # each value subclasses its key


def build_detector(
    base: type[_M],
    *args: object,
    neck: str,
    aux_loss_weight: float,
    augmented: type[_M] | None = None,
    **kwargs: object,
) -> _M:
    """``base(*args, **kwargs)``, or its AugFPN variant, with ``IdentityTransform`` swapped in.

    The tail every detector builder shares: the class for ``neck`` (``augmented`` where the builder
    brings its own, else :func:`detector_class`), the Consistent Supervision weight where that class
    takes one, and a transform that only batches (our preprocessing runs before the model).
    """
    _check(neck)
    if neck == "augfpn":
        cls = augmented if augmented is not None else detector_class(base, neck=neck)
        kwargs = {**kwargs, "aux_loss_weight": aux_loss_weight}
    else:
        cls = base
    model = cls(*args, **kwargs)
    model.transform = IdentityTransform()
    return model

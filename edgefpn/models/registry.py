"""The detector architectures by name. RetinaNet and Faster R-CNN join this dict later."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from edgefpn.models.fcos import fcos

__all__ = ["ARCHITECTURES", "build_model"]

ARCHITECTURES: Mapping[str, Callable[..., nn.Module]] = {"fcos": fcos}


def build_model(*, arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the detector ``arch`` with ``num_classes`` classes; ``kwargs`` go to its builder."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; valid names: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](num_classes=num_classes, **kwargs)

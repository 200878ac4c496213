"""The detector architectures by name: the one torch-side extension point.

``ARCHITECTURES[arch]`` is an :class:`ArchSpec`: the keyword-only builder, the export-wrapper factory
(the wrapper advertises its output names and static shapes, see ``edgefpn.models.outputs``), and the
map from the model config to the builder's arguments. The numpy side has its own literal dict keyed by
the same names: ``edgefpn.postprocess.DECODERS``. A new architecture registers in both.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from edgefpn.config import ModelConfig
from edgefpn.models.faster_rcnn import faster_rcnn
from edgefpn.models.faster_rcnn_export import FasterRCNNExportWrapper
from edgefpn.models.fcos import FCOSExportWrapper, fcos
from edgefpn.models.outputs import ExportModule
from edgefpn.models.retinanet import RetinaNetExportWrapper, retinanet, retinanet_v2

__all__ = ["ARCHITECTURES", "ArchSpec", "arch_spec", "build_model", "export_wrapper"]


@dataclass(frozen=True)
class ArchSpec:
    """One architecture, torch side.

    Args:
        builder: ``builder(*, num_classes, **kwargs) -> nn.Module``, a torchvision-style detector that
            takes preprocessed images (train mode: loss dict; eval mode: torchvision detections).
        wrapper: ``wrapper(model) -> ExportModule``: the fixed tuple of raw outputs that is exported.
        build_kwargs: ``build_kwargs(model_config) -> dict`` of plain values, the builder's arguments
            besides ``num_classes``; recorded in the checkpoint meta (``meta["build"]``) to rebuild it.
    """

    builder: Callable[..., nn.Module]
    wrapper: Callable[[Any], ExportModule]  # takes the model its builder makes
    build_kwargs: Callable[[ModelConfig], dict[str, Any]]
    qdq_op_types: tuple[str, ...] | None = None
    label_offset: int = 0


def _backbone_kwargs(m: ModelConfig) -> dict[str, Any]:
    """Backbone and neck settings every detector takes."""
    return {
        "backbone_name": m.backbone,
        "backbone_width": m.backbone_width,
        "fpn_channels": m.fpn_channels,
        # torchvision's convention: a pretrained backbone keeps its ImageNet BatchNorm statistics frozen
        "norm": "frozen_bn" if m.backbone_weights else m.norm,
        "neck": m.neck,
    }


def _fpn_kwargs(m: ModelConfig) -> dict[str, Any]:
    return {**_backbone_kwargs(m), "head_convs": m.head_convs}


def _faster_rcnn_kwargs(m: ModelConfig) -> dict[str, Any]:
    return {
        **_backbone_kwargs(m),
        "variant": m.variant,
        "representation_size": m.representation_size,
        "rpn_pre_nms_top_n": m.rpn.pre_nms_top_n,
        "rpn_post_nms_top_n": m.rpn.post_nms_top_n,
        "rpn_nms_thresh": m.rpn.nms_thresh,
        "rpn_score_thresh": m.rpn.score_thresh,
    }


ARCHITECTURES: Mapping[str, ArchSpec] = {
    "fcos": ArchSpec(builder=fcos, wrapper=FCOSExportWrapper, build_kwargs=_fpn_kwargs),
    "retinanet": ArchSpec(builder=retinanet, wrapper=RetinaNetExportWrapper, build_kwargs=_fpn_kwargs),
    "retinanet_v2": ArchSpec(builder=retinanet_v2, wrapper=RetinaNetExportWrapper, build_kwargs=_fpn_kwargs),
    "faster_rcnn": ArchSpec(
        builder=faster_rcnn,
        wrapper=FasterRCNNExportWrapper,
        build_kwargs=_faster_rcnn_kwargs,
        qdq_op_types=("Conv", "Gemm", "MatMul"),
        label_offset=1,
    ),
}


def arch_spec(arch: str) -> ArchSpec:
    """The spec of ``arch``; ``ValueError`` naming the valid ones for an unknown name."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; valid names: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def build_model(*, arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the detector ``arch`` with ``num_classes`` classes; ``kwargs`` go to its builder.

    A key the builder does not take (misspelt, or another arch's, e.g. ``head_convs`` for
    ``faster_rcnn``) is a ``ValueError`` naming it and the valid ones, never silently ignored.
    """
    builder = arch_spec(arch).builder
    params = inspect.signature(builder).parameters
    # a builder that forwards **kwargs (retinanet_v2 -> retinanet) leaves the check to the one it calls
    forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [name for name in params if name != "num_classes"]
    unexpected = [key for key in kwargs if key not in accepted]
    if unexpected and not forwards:
        raise ValueError(f"{arch} takes no argument {unexpected[0]!r}; valid: {', '.join(accepted)}")
    return builder(num_classes=num_classes, **kwargs)


def export_wrapper(arch: str, model: nn.Module) -> ExportModule:
    """``model``'s export wrapper (fixed tuple of raw outputs), in eval mode."""
    return arch_spec(arch).wrapper(model).eval()

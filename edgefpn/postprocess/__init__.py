"""The numpy decoders + class-aware NMS that every backend uses (no torch: the device runtime imports it).

``DECODERS`` maps an architecture name (the ``arch`` recorded in the checkpoint meta, the ONNX
metadata ``edgefpn.arch`` and the bundle's ``pipeline.json``) to its :class:`Decoder`. A decoder takes
the engine's full output dict, the :class:`PostprocessParams` and the input size, and returns one
:class:`Detections` per batch item in input (letterboxed) pixels. Choosing it by the recorded arch, never
by looking at the output names, keeps a mismatch between run and engine an error instead of a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from edgefpn.postprocess.common import LEVELS, STRIDES, Detections, PostprocessParams, split_output_name
from edgefpn.postprocess.faster_rcnn import FASTER_RCNN_LEVELS, FASTER_RCNN_STRIDES, faster_rcnn_decode
from edgefpn.postprocess.fcos import fcos_decode
from edgefpn.postprocess.nms import batched_nms, box_iou, nms
from edgefpn.postprocess.retinanet import retinanet_decode

__all__ = [
    "DECODERS",
    "LEVELS",
    "STRIDES",
    "Decoder",
    "Detections",
    "PostprocessParams",
    "batched_nms",
    "box_iou",
    "decode",
    "decoder_for",
    "faster_rcnn_decode",
    "fcos_decode",
    "nms",
    "retinanet_decode",
    "split_output_name",
]

DecodeFn = Callable[..., list[Detections]]  # (outputs, params, *, image_size) -> per-image detections


@dataclass(frozen=True)
class Decoder:
    """An architecture's numpy decode and the pyramid levels its ``PostprocessParams`` describe.

    Args:
        decode: ``decode(outputs, params, *, image_size)``: ``outputs`` is the engine's full output dict
            (name -> array), ``image_size`` the ``(H, W)`` of the network input; returns per-image
            ``Detections`` (xyxy in input pixels, labels ``0..C-1``, by decreasing score).
        levels: the levels named in ``params.levels`` (``p3``..``p7`` for FCOS and RetinaNet).
        strides: their strides in input pixels.
        selected_outputs: outputs whose rows are a data-dependent selection (a two-stage detector's
            proposals and the RoI head run on them). Two engines' rows only correspond when both selected
            the same set, which reduced precision legitimately changes (and a near-tie can change in
            FP32), so ``check`` reports their agreement but gates them on NaN/Inf only; the detection
            agreement and mAP judge that stage.
    """

    decode: DecodeFn
    levels: tuple[str, ...] = LEVELS
    strides: tuple[int, ...] = STRIDES
    selected_outputs: tuple[str, ...] = ()


DECODERS: Mapping[str, Decoder] = {
    "fcos": Decoder(decode=fcos_decode),
    "retinanet": Decoder(decode=retinanet_decode),
    "retinanet_v2": Decoder(decode=retinanet_decode),  # v2 changes the network, not the outputs
    "faster_rcnn": Decoder(
        decode=faster_rcnn_decode,
        levels=FASTER_RCNN_LEVELS,
        strides=FASTER_RCNN_STRIDES,
        selected_outputs=("proposals", "proposal_scores", "roi_cls", "roi_box"),
    ),
}


def decoder_for(arch: str) -> Decoder:
    """The decoder of ``arch``; ``ValueError`` naming the valid ones for an unknown name."""
    if arch not in DECODERS:
        raise ValueError(f"unknown arch {arch!r}; valid names: {', '.join(DECODERS)}")
    return DECODERS[arch]


def decode(
    arch: str, outputs: Mapping[str, np.ndarray], params: PostprocessParams, *, image_size: tuple[int, int]
) -> list[Detections]:
    """Decode ``outputs`` of an ``arch`` engine: ``decoder_for(arch).decode(outputs, params,
    image_size=...)``."""
    return decoder_for(arch).decode(outputs, params, image_size=image_size)

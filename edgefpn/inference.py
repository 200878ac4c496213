"""The end-to-end path every backend shares: image file -> preprocess -> infer -> decode -> boxes.

numpy + Pillow only (no torch), so the device runtime can use it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgefpn.backends.base import INPUT_NAME, Runner
from edgefpn.data.preprocess import Letterbox, boxes_to_original, preprocess, preprocess_file
from edgefpn.postprocess import Detections, PostprocessParams, decoder_for


@dataclass(frozen=True)
class Pipeline:
    """Pre- and post-processing parameters: everything but the engine.

    ``arch`` picks the decoder in ``edgefpn.postprocess.DECODERS``; the stages pass the arch recorded
    in the run's checkpoint meta, the runtime the one in the bundle's ``pipeline.json``.
    """

    input_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    post: PostprocessParams
    arch: str = "fcos"

    def __post_init__(self) -> None:
        decoder_for(self.arch)  # an unknown arch fails here, not on the first image

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        chw, lb = preprocess(image, size=self.input_size, mean=self.mean, std=self.std)
        return chw[None], lb  # [1, 3, H, W]

    def prepare_file(self, path: str | Path) -> tuple[np.ndarray, Letterbox]:
        """``prepare(load_image(path))``: image file -> model input, the end-to-end path."""
        chw, lb = preprocess_file(path, size=self.input_size, mean=self.mean, std=self.std)
        return chw[None], lb  # [1, 3, H, W]

    def decode(self, outputs: Mapping[str, np.ndarray], letterboxes: Sequence[Letterbox]) -> list[Detections]:
        """Raw per-level outputs -> detections in original image pixels, one per batch item."""
        dets = decoder_for(self.arch).decode(outputs, self.post, image_size=self.input_size)
        return [
            replace(d, boxes=boxes_to_original(d.boxes, lb).astype(np.float32))
            for d, lb in zip(dets, letterboxes, strict=True)
        ]


def detect_file(runner: Runner, pipeline: Pipeline, path: str | Path) -> Detections:
    """Decode one image file and detect objects in it (the end-to-end latency path)."""
    batch, lb = pipeline.prepare_file(path)
    outputs = runner.infer({INPUT_NAME: batch})
    return pipeline.decode(outputs, [lb])[0]

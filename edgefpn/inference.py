"""The end-to-end path every backend shares: image file -> preprocess -> infer -> decode -> boxes.

numpy + Pillow only (no torch), so the device runtime can use it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgefpn.backends.base import INPUT_NAME, THRESH_INPUT, Runner
from edgefpn.data.preprocess import (
    Letterbox,
    boxes_to_original,
    letterbox_u8,
    letterbox_u8_file,
    preprocess,
    preprocess_file,
)
from edgefpn.postprocess import Detections, PostprocessParams, decoder_for
from edgefpn.postprocess.nms import _float32_below

# The two engine contracts (README "Engine contracts"): what an engine is fed and what it returns.
INPUTS = ("float", "uint8")  # float [N, 3, H, W] normalised | uint8 [N, H, W, 3] letterboxed + valid_hw
CONTRACTS = ("raw", "detections")  # per-level maps decoded here | det_boxes/det_scores/det_labels/num_dets


@dataclass(frozen=True)
class PrePost:
    """Pre- and post-processing parameters and steps: everything on the path but the engine.

    ``arch`` picks the decoder in ``edgefpn.postprocess.DECODERS``; the stages pass the arch recorded
    in the run's checkpoint meta, the runtime the one in the bundle's ``pipeline.json``.
    """

    input_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    post: PostprocessParams
    arch: str = "fcos"
    input: str = "float"  # what the engine is fed: INPUTS
    contract: str = "raw"  # what the engine returns: CONTRACTS

    def __post_init__(self) -> None:
        decoder_for(self.arch)  # an unknown arch fails here, not on the first image
        if self.input not in INPUTS or self.contract not in CONTRACTS:
            raise ValueError(
                f"input must be one of {INPUTS} and contract one of {CONTRACTS}, "
                f"got {self.input!r} and {self.contract!r}"
            )

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        chw, lb = preprocess(image, size=self.input_size, mean=self.mean, std=self.std)
        return chw[None], lb  # [1, 3, H, W]

    def prepare_file(self, path: str | Path) -> tuple[np.ndarray, Letterbox]:
        """``prepare(load_image(path))``: image file -> model input, the end-to-end path."""
        chw, lb = preprocess_file(path, size=self.input_size, mean=self.mean, std=self.std)
        return chw[None], lb  # [1, 3, H, W]

    def graph_inputs(self, n: int) -> dict[str, np.ndarray]:
        """The inputs besides the image that an engine of this contract takes, for ``n`` images: a
        detections engine's ``score_thresh`` [n] (the largest float32 <= ``post.score_thresh``, what
        the numpy decoder compares against); none for a raw engine."""
        if self.contract == "raw":
            return {}
        return {THRESH_INPUT: np.full((n,), _float32_below(self.post.score_thresh), dtype=np.float32)}

    def feed_image(self, image: np.ndarray) -> tuple[dict[str, np.ndarray], Letterbox]:
        """A decoded ``uint8 [h, w, 3]`` RGB image -> the engine's whole feed in this ``PrePost``'s
        ``input`` type and ``contract``."""
        if self.input == "uint8":
            u8, valid_hw, lb = letterbox_u8(image, size=self.input_size)
            return {"images_u8": u8, "valid_hw": valid_hw, **self.graph_inputs(1)}, lb
        batch, lb = self.prepare(image)
        return {INPUT_NAME: batch, **self.graph_inputs(1)}, lb

    def feed_file(self, path: str | Path) -> tuple[dict[str, np.ndarray], Letterbox]:
        """Image file -> the engine's whole feed (as :meth:`feed_image`), and the letterbox."""
        if self.input == "uint8":
            image, valid_hw, lb = letterbox_u8_file(path, size=self.input_size)
            return {"images_u8": image, "valid_hw": valid_hw, **self.graph_inputs(1)}, lb
        batch, lb = self.prepare_file(path)
        return {INPUT_NAME: batch, **self.graph_inputs(1)}, lb

    def detections(
        self, outputs: Mapping[str, np.ndarray], letterboxes: Sequence[Letterbox]
    ) -> list[Detections]:
        """The engine's outputs in this ``PrePost``'s ``contract`` -> detections in original image pixels."""
        if self.contract == "raw":
            return self.decode(outputs, letterboxes)
        return [
            replace(d, boxes=boxes_to_original(d.boxes, lb).astype(np.float32))
            for d, lb in zip(self.read_detections(outputs), letterboxes, strict=True)
        ]

    def read_detections(self, outputs: Mapping[str, np.ndarray]) -> list[Detections]:
        """An in-graph NMS engine's static outputs -> per image the first ``num_dets`` detections (input
        pixels) whose score passes ``post.score_thresh``.

        The engine was fed that threshold (:meth:`graph_inputs`), so the filter here drops nothing; it
        stays for outputs of a feed made at a lower threshold, where it gives exactly the numpy
        decoder's result at this one: the boxes it drops rank below every box it keeps, in the
        per-level top-k, in greedy NMS and at the detection cap alike.
        """
        thresh = _float32_below(self.post.score_thresh)
        dets = []
        for boxes, scores, labels, n in zip(
            outputs["det_boxes"],
            outputs["det_scores"],
            outputs["det_labels"],
            np.asarray(outputs["num_dets"]).reshape(-1),
            strict=True,
        ):
            keep = np.flatnonzero(scores[: int(n)] > thresh)
            dets.append(
                Detections(
                    boxes[keep].astype(np.float32),
                    scores[keep].astype(np.float32),
                    labels[keep].astype(np.int64),
                )
            )
        return dets

    def decode(self, outputs: Mapping[str, np.ndarray], letterboxes: Sequence[Letterbox]) -> list[Detections]:
        """Raw per-level outputs -> detections in original image pixels, one per batch item."""
        dets = decoder_for(self.arch).decode(outputs, self.post, image_size=self.input_size)
        return [
            replace(d, boxes=boxes_to_original(d.boxes, lb).astype(np.float32))
            for d, lb in zip(dets, letterboxes, strict=True)
        ]


def detect_file(runner: Runner, prepost: PrePost, path: str | Path) -> Detections:
    """Decode one image file and detect objects in it (the end-to-end latency path)."""
    feed, lb = prepost.feed_file(path)
    return prepost.detections(runner.infer(feed), [lb])[0]

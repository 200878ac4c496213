"""The ``streaming`` benchmark scenario: the pipelined runtime's end-to-end FPS on a video of images.

Used by ``edgefpn benchmark`` (:mod:`edgefpn.pipeline.benchmark`) and ``python -m edgefpn.runtime
bench --images``. The video is written with OpenCV (MJPG in AVI, which every OpenCV build with a video
backend reads back); frames of different sizes are placed top-left on one canvas of the largest size,
black elsewhere, so that no image is stretched.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.errors import DataError
from edgefpn.runtime import FrameStages
from edgefpn.runtime.conditions import run_conditions
from edgefpn.runtime.sources import CaptureSource
from edgefpn.runtime.stream import run_stream

__all__ = ["bench_streaming", "measure_streaming", "with_score_thresh", "write_video"]


def write_video(images: Sequence[Path], path: Path, *, fps: float = 30.0, min_frames: int = 1) -> int:
    """Write ``images`` as an MJPG AVI at ``path``, as many whole passes over them as it takes to reach
    ``min_frames``; returns the frame count (checked by reading it back)."""
    import cv2

    from edgefpn.data.preprocess import load_image

    if not images:
        raise DataError(f"{path}: no images to make a video of")
    frames = [load_image(p) for p in images]
    passes = max(1, -(-int(min_frames) // len(frames)))
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise DataError(f"{path}: this OpenCV build cannot write MJPG video")
    canvas = np.zeros((h, w, 3), np.uint8)
    try:
        for f in frames * passes:
            canvas[:] = 0
            canvas[: f.shape[0], : f.shape[1]] = f[:, :, ::-1]  # RGB -> BGR
            writer.write(canvas)
    finally:
        writer.release()
    cap = cv2.VideoCapture(str(path))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    if count != len(frames) * passes:
        raise DataError(f"{path}: wrote {len(frames) * passes} frames but OpenCV reads back {count}")
    return count


def with_score_thresh(stages: FrameStages, score_thresh: float) -> FrameStages:
    """The same stages decoding at another score threshold (the eval one, say)."""
    pipe = stages.prepost
    return replace(stages, prepost=replace(pipe, post=replace(pipe.post, score_thresh=float(score_thresh))))


def _engine_streams(stages: FrameStages) -> int:
    compiled = getattr(stages.runner, "compiled", None)
    if compiled is not None:  # OpenVINO: the execution streams the compiled model runs
        return int(compiled.get_property("NUM_STREAMS"))
    return 1


def measure_streaming(
    stages: FrameStages, video: Path, *, threads: int, requests: int | None = None, queue_size: int = 4
) -> dict[str, Any]:
    """Stream ``video`` once through ``stages``; ``fps`` counts frames out over first capture to last
    detection (decode, preprocess, inference and NMS all inside), latency is capture to detection.

    Returns the scenario record: ``fps``, ``latency_ms`` {p50, p99}, ``frames``, ``dropped`` and
    ``conditions`` (:func:`edgefpn.runtime.conditions.run_conditions`).
    """
    h, w = stages.prepost.input_size
    warm, _ = stages.prepare(np.zeros((h, w, 3), np.uint8))
    stages.infer(stages.stack([warm] * stages.batch))  # warm: first-call costs are not streaming
    stats = run_stream(
        stages, [CaptureSource(str(video))], lambda _: None, requests=requests, queue_size=queue_size
    )
    if stats.errors:
        raise DataError(stats.errors[0])
    s = stats.summary()
    return {
        "fps": s["fps"],
        "latency_ms": s["latency_ms"],
        "frames": s["frames"],
        "dropped": s["dropped"],
        "score_thresh": stages.prepost.post.score_thresh,
        "conditions": run_conditions(
            threads=threads, streams=_engine_streams(stages), requests=stats.requests, batch=stages.batch
        ),
    }


def bench_streaming(
    spec: Any,
    prepost: Any,
    images: Sequence[Path],
    *,
    threads: int,
    eval_score_thresh: float | None = None,
    min_frames: int = 1,
) -> dict[str, Any]:
    """``python -m edgefpn.runtime bench``'s streaming scenario: ``{"deploy": record[, "eval": record]}`` on
    a video made from ``images`` (whole passes, at least ``min_frames``); ``prepost`` decodes at the
    deploy threshold (the bundle's)."""
    preposts = {"deploy": prepost}
    if eval_score_thresh is not None:
        preposts["eval"] = replace(prepost, post=replace(prepost.post, score_thresh=float(eval_score_thresh)))
    with tempfile.TemporaryDirectory(prefix="edgefpn-video-") as tmp:
        video = Path(tmp) / "val.avi"
        write_video(images, video, min_frames=min_frames)
        return streaming_scenario(spec, preposts, video, threads=threads)


def streaming_scenario(
    spec: Any, preposts: dict[str, Any], video: Path | None, *, threads: int, requests: int | None = None
) -> dict[str, Any]:
    """The ``streaming`` scenario of one engine (an :class:`~edgefpn.backends.base.EngineSpec`), per
    threshold: ``preposts`` maps a name (``deploy``, ``eval``) to the ``PrePost`` decoding at it. The
    engine is opened once, as ``python -m edgefpn.runtime stream`` opens it (OpenVINO: THROUGHPUT hint,
    its optimal number of requests in flight)."""
    from edgefpn.runtime import open_runner

    if video is None:
        return {"skipped": "no val images on disk to make the video from"}
    with open_runner(spec, threads=threads, hint="throughput") as runner:
        batch = _input_batch(runner)
        return {
            name: measure_streaming(
                FrameStages(pipe, runner, batch=batch), video, threads=threads, requests=requests
            )
            for name, pipe in preposts.items()
        }


def _input_batch(runner: Any) -> int:
    from edgefpn.backends.base import INPUT_NAME

    shapes = runner.io_shapes() if hasattr(runner, "io_shapes") else {}
    shape = shapes.get(INPUT_NAME) or shapes.get("images_u8")  # the float or the uint8 contract
    return int(shape[0]) if shape and isinstance(shape[0], int) and shape[0] >= 1 else 1

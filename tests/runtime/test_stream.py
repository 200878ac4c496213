"""The streaming runtime: same detections as `infer` on video / folder / camera stand-in, Ctrl-C, a truncated
video, frame order, backpressure, dropping, batch-N engines."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgefpn.runtime import BundleSession, FrameStages, detections_to_records
from edgefpn.runtime import __main__ as runtime_main
from edgefpn.runtime.scenario import write_video
from edgefpn.runtime.sources import ArraySource, CaptureSource, open_source
from edgefpn.runtime.stream import run_stream
from tests.runtime.conftest import video_and_frames

pytest.importorskip("openvino", reason="needs the openvino extra: pip install 'edgefpn[openvino]'")


@pytest.fixture(scope="module")
def video(packaged, tmp_path_factory):
    """The val images as an MJPG video, and its frames as decoded, saved losslessly as PNG."""
    _, _, _, images = packaged
    return video_and_frames(sorted(images.iterdir()), tmp_path_factory.mktemp("video"))


def _infer(art, images: Path, tmp_path: Path) -> list[list[dict]]:
    """`infer`'s detections, grouped per image in sorted order."""
    out = tmp_path / "infer.json"
    assert (
        runtime_main.main(
            ["infer", "--bundle", str(art.path), "--images", str(images), "--out", str(out), "--threads", "1"]
        )
        == 0
    )
    records = json.loads(out.read_text())
    return [[r for r in records if r["file_name"] == p.name] for p in sorted(images.iterdir())]


def _stream(art, source: str, out: Path, *extra: str) -> tuple[int, list[dict]]:
    rc = runtime_main.main(
        ["stream", "--bundle", str(art.path), "--source", source, "--out", str(out), "--threads", "1", *extra]
    )
    return rc, [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def _same(got: list[list[dict]], want: list[list[dict]]) -> None:
    assert len(got) == len(want) and sum(map(len, want)) > 0
    for g_frame, w_frame in zip(got, want, strict=True):
        assert [g["category_id"] for g in g_frame] == [w["category_id"] for w in w_frame]
        if w_frame:
            np.testing.assert_allclose(
                [g["bbox"] for g in g_frame], [w["bbox"] for w in w_frame], atol=1e-4, rtol=0
            )
            np.testing.assert_allclose(
                [g["score"] for g in g_frame], [w["score"] for w in w_frame], atol=1e-5
            )


def test_stream_matches_infer_on_folder_video_and_camera(packaged, video, tmp_path):
    _, _, art, images = packaged
    path, frames = video
    # image folder: the same files, the same records
    rc, lines = _stream(art, str(images), tmp_path / "folder.jsonl", "--requests", "3")
    assert rc == 0
    assert [line["file_name"] for line in lines] == sorted(p.name for p in images.iterdir())
    _same([line["detections"] for line in lines], _infer(art, images, tmp_path))
    # a video file: what infer finds on its decoded frames
    want = _infer(art, frames, tmp_path)
    rc, lines = _stream(art, str(path), tmp_path / "video.jsonl")
    assert rc == 0 and [line["frame"] for line in lines] == list(range(len(want)))
    assert all(line["latency_ms"] > 0 for line in lines)
    _same([line["detections"] for line in lines], want)
    # a generated source standing in for a camera: live pacing, two streams interleaved
    import cv2

    rgb = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(frames.iterdir())]
    got: dict[int, list] = {0: [], 1: []}
    with BundleSession(art.path, threads=1) as s:
        stats = run_stream(
            s.stages,
            [ArraySource(rgb, name="cam0", pace_fps=200), ArraySource(rgb, name="cam1")],
            lambda r: got[r.frame.source].append(
                detections_to_records(r.detections, r.frame.name, s.category_ids)
            ),
            requests=2,
        )
    assert stats.frames == 2 * len(rgb) and not stats.errors
    assert [st["frames"] for st in stats.summary()["streams"]] == [len(rgb)] * 2
    _same(got[0], want)
    _same(got[1], want)


def test_sigint_flushes_what_was_processed(packaged, video, tmp_path):
    _, _, art, _ = packaged
    path, frames = video
    long = tmp_path / "long.avi"
    write_video(sorted(frames.iterdir()) * 40, long)  # 240 frames; paced at 20 FPS: 12 s unless stopped
    out = tmp_path / "dets.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefpn.runtime",
            "stream",
            "--bundle",
            str(art.path),
            "--source",
            str(long),
            "--out",
            str(out),
            "--threads",
            "1",
            "--pace-fps",
            "20",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    for line in proc.stderr:  # wait until frames are coming out
        lines.append(line)
        if line.startswith("[stream] first frame"):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, "".join(lines) + rest
    assert "Traceback" not in rest and "interrupted" in rest
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert 1 <= len(written) < 240
    assert [w["frame"] for w in written] == list(range(len(written)))
    assert not list(tmp_path.glob(".dets.jsonl.*"))  # the temporary file was renamed, not left behind


def test_truncated_video_keeps_earlier_frames(packaged, video, tmp_path, capsys):
    _, _, art, _ = packaged
    path, frames = video
    full = tmp_path / "full.avi"
    write_video(sorted(frames.iterdir()) * 4, full)  # 24 frames
    cut = tmp_path / "cut.avi"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    capsys.readouterr()
    rc, got = _stream(art, str(cut), tmp_path / "cut.jsonl")
    err = capsys.readouterr().err
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cut.avi" in errors[0] and "of the 24" in errors[0], err
    assert "Traceback" not in err
    rc, whole = _stream(art, str(full), tmp_path / "full.jsonl")
    assert rc == 0 and 0 < len(got) < len(whole) == 24
    # every frame before the break as in the whole video; the frame the file breaks in comes as FFmpeg
    # decodes it (the missing part concealed), so it is not compared
    assert got[:-1] == [
        dict(w, source=str(cut), latency_ms=g["latency_ms"]) for g, w in zip(got[:-1], whole, strict=False)
    ]


def test_sources_refuse_what_they_cannot_open(tmp_path, capsys):
    from edgefpn.runtime.sources import SourceError

    with pytest.raises(SourceError, match="no such video file"):
        open_source(str(tmp_path / "missing.avi"))
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(SourceError):
        frames = list(CaptureSource(str(junk)).frames())
        assert frames  # opened: then it must not produce frames silently
    out = tmp_path / "mine.jsonl"
    out.write_text("my notes\n")
    assert (
        runtime_main.main(["stream", "--bundle", "x.tar", "--source", str(tmp_path), "--out", str(out)]) == 2
    )
    assert out.read_text() == "my notes\n" and "refusing" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the pipeline itself, on a stand-in engine (no backend): order, backpressure, dropping, batching


@dataclass
class _Spec:
    backend: str = "onnxruntime"  # several requests in flight on threads, as for ONNX Runtime


class _Runner:
    spec = _Spec()


@dataclass(frozen=True)
class _Stages:
    """prepare/infer/decode that carry each frame's number through, with random engine times so that
    requests finish out of order."""

    batch: int = 1
    runner: _Runner = _Runner()
    delay: float = 0.004

    def prepare(self, image):
        return {"x": image[:1, :1, :1].astype(np.float32).reshape(1, 1, 1, 1)}, int(image[0, 0, 0])

    stack = FrameStages.stack  # the runtime's own batching (zero-padded to `batch`)

    def infer(self, feed):
        time.sleep(random.uniform(0, self.delay))
        return {"x": feed["x"].copy()}

    def decode(self, outputs, letterboxes):
        assert (
            len(outputs["x"]) == self.batch
        )  # padding comes in; cut off by FrameStages.decode in the runtime
        return [int(v) for v in outputs["x"][: len(letterboxes), 0, 0, 0]]


def _frames(n: int, counter: list[int] | None = None):
    for i in range(n):
        if counter is not None:
            counter[0] += 1
        yield np.full((2, 2, 3), i % 256, np.uint8)


@pytest.mark.parametrize("batch", [1, 3])
def test_frame_order_and_bounded_queues(batch):
    produced = [0]
    out: list[int] = []
    ahead: list[int] = []

    def on_frame(r):
        out.append(r.detections)
        ahead.append(produced[0] - len(out))
        time.sleep(0.002)  # a slow consumer: the readers must wait for it

    stats = run_stream(
        _Stages(batch=batch), [ArraySource(_frames(200, produced))], on_frame, requests=3, queue_size=4
    )
    assert out == [i % 256 for i in range(200)] and stats.frames == 200 and stats.summary()["dropped"] == 0
    # frames read but not yet written: the frame queue, the batches in the window, one in each hand
    window = 3 + 1 + 1
    assert max(ahead) <= 4 + window * batch + batch + 1, max(ahead)


def test_drop_late_counts_what_it_drops():
    out: list[int] = []
    stats = run_stream(
        _Stages(delay=0.02),
        [ArraySource(_frames(100), pace_fps=1000)],
        lambda r: out.append(r.detections),
        requests=1,
        queue_size=1,
        drop_late=True,
    )
    s = stats.summary()
    assert s["dropped"] > 0 and s["frames"] + s["dropped"] == 100 == len(out) + s["streams"][0]["dropped"]
    assert out == sorted(out)  # what is kept stays in order


def test_stop_event_finishes_what_was_captured():
    stop = threading.Event()
    out: list[int] = []

    def on_frame(r):
        out.append(r.detections)
        if len(out) == 5:
            stop.set()

    stats = run_stream(_Stages(), [ArraySource(_frames(10_000))], on_frame, stop=stop)
    assert stats.interrupted and 5 <= len(out) < 100 and out == list(range(len(out)))


def test_batch2_onnx_engine_matches_batch1(packaged, tmp_path):
    """A batch-2 engine (the tiny model exported at batch 2): frames are batched in pairs, the odd last one
    padded, and each frame's detections are those of the batch-1 engine."""
    from edgefpn.backends.base import EngineSpec
    from edgefpn.backends.onnxruntime import OnnxRuntimeRunner
    from edgefpn.models.export import export_onnx
    from edgefpn.models.loading import model_from_checkpoint
    from edgefpn.models.registry import export_wrapper
    from edgefpn.pipeline.common import make_prepost

    cfg, run_dir, _, images = packaged
    model, meta = model_from_checkpoint(run_dir / "model.pt")
    b2 = tmp_path / "model.b2.onnx"
    export_onnx(
        export_wrapper(meta["arch"], model),
        b2,
        input_size=cfg.model.input_size,
        batch=2,
        opset=cfg.export.opset,
    )
    from edgefpn.data.preprocess import load_image

    rgb = [load_image(p) for p in sorted(images.iterdir())][:5]
    pipe = make_prepost(cfg, deploy=True)
    results = {}
    for name, path, batch in (("b1", run_dir / "model.onnx", 1), ("b2", b2, 2)):
        with OnnxRuntimeRunner(EngineSpec(name, "onnxruntime", "fp32", path), threads=1) as runner:
            stages = FrameStages(pipe, runner, batch=batch)
            got = []
            run_stream(stages, [ArraySource(rgb)], lambda r, got=got: got.append(r.detections), requests=2)
            results[name] = got
    assert len(results["b2"]) == len(results["b1"]) == 5
    for a, b in zip(results["b1"], results["b2"], strict=True):
        assert a.labels.tolist() == b.labels.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4, rtol=0)


@pytest.mark.tensorrt
def test_tensorrt_streams_match_sync_calls(packaged, tmp_path):
    """Several execution contexts on their own CUDA streams give the detections of the runner's sync path."""
    pytest.importorskip("tensorrt", reason="tensorrt is not installed (pip install tensorrt, NVIDIA GPU)")
    from edgefpn.backends.tensorrt import TensorRTRunner, cuda_device

    if cuda_device() is None:
        pytest.skip("no CUDA GPU visible (torch.cuda.is_available() is false)")
    from edgefpn.artifacts import write_manifest
    from edgefpn.backends.base import EngineSpec
    from edgefpn.backends.tensorrt import build_engine
    from edgefpn.config import TensorRTConfig
    from edgefpn.data.preprocess import load_image
    from edgefpn.pipeline.common import make_prepost

    cfg, run_dir, _, images = packaged
    engine = tmp_path / "model.engine"
    settings = TensorRTConfig(workspace_mb=256)
    result = build_engine(run_dir / "model.onnx", engine, precision="fp16", settings=settings, cache_dir=None)
    write_manifest(
        engine, stage="build", config_hash="test", inputs={}, extra={"tensorrt": result.manifest(settings)}
    )
    rgb = [load_image(p) for p in sorted(images.iterdir())]
    with TensorRTRunner(EngineSpec("t", "tensorrt", "fp16", engine), threads=1) as runner:
        stages = FrameStages(make_prepost(cfg, deploy=True), runner)
        want = [stages.decode(stages.infer(stages.prepare(im)[0]), [stages.prepare(im)[1]])[0] for im in rgb]
        got = []
        run_stream(stages, [ArraySource(rgb)], lambda r: got.append(r.detections), requests=3)
    for a, b in zip(want, got, strict=True):
        assert a.labels.tolist() == b.labels.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, rtol=0)

"""The streaming runtime on in-graph engines (uint8 image in, detections out): the same detections as
`infer` with the same engine, from an image folder, a video and an in-memory camera stand-in, with no
numpy decode on the way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgefpn.runtime import __main__ as runtime_main
from tests.runtime.conftest import video_and_frames

pytest.importorskip("openvino", reason="needs the openvino extra: pip install 'edgefpn[openvino]'")

ENGINES = ("openvino-fp32-e2e", "onnxruntime-fp32-e2e")


@pytest.fixture(scope="module")
def frames(packaged_e2e, tmp_path_factory):
    """The val images as an MJPG video, and that video's frames as decoded, saved losslessly as PNG."""
    from edgefpn.data.coco import load_split

    cfg, _, _ = packaged_e2e
    images = [Path(r.path) for r in load_split(Path(cfg.data.root), cfg.data.val_split).images]
    return video_and_frames(images, tmp_path_factory.mktemp("e2e-video"))


def _run(*argv: str) -> None:
    assert runtime_main.main([*argv, "--threads", "1"]) == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_stream_of_an_in_graph_engine_matches_infer(packaged_e2e, frames, tmp_path, engine, monkeypatch):
    from edgefpn import inference

    _, _, art = packaged_e2e
    video, folder = frames
    bundle = ["--bundle", str(art.path), "--engine", engine]
    _run("infer", *bundle, "--images", str(folder), "--out", str(tmp_path / "infer.json"))
    records = json.loads((tmp_path / "infer.json").read_text())
    want = [[r for r in records if r["file_name"] == p.name] for p in sorted(folder.iterdir())]
    assert sum(map(len, want)) > 0

    def no_decode(*_):  # an engine that returns detections is never decoded by numpy
        raise AssertionError("numpy decode called for an in-graph NMS engine")

    monkeypatch.setattr(inference.PrePost, "decode", no_decode)
    for name, source in (("video", str(video)), ("folder", str(folder))):
        out = tmp_path / f"{name}.jsonl"
        _run("stream", *bundle, "--source", source, "--out", str(out), "--requests", "2")
        got = [json.loads(line)["detections"] for line in out.read_text().splitlines()]
        assert len(got) == len(want), name
        for g, w in zip(got, want, strict=True):
            assert [d["category_id"] for d in g] == [d["category_id"] for d in w], name
            if w:
                np.testing.assert_allclose([d["bbox"] for d in g], [d["bbox"] for d in w], atol=1e-4)
                np.testing.assert_allclose([d["score"] for d in g], [d["score"] for d in w], atol=1e-5)


def test_camera_stand_in_batches_an_in_graph_engine(packaged_e2e, frames):
    """An in-memory source (what a camera gives) through the uint8 engine's feed: each frame's detections
    are those of the single-image path of the same session."""
    import cv2

    from edgefpn.runtime import BundleSession
    from edgefpn.runtime.sources import ArraySource
    from edgefpn.runtime.stream import run_stream

    _, _, art = packaged_e2e
    _, folder = frames
    rgb = [cv2.imread(str(p))[:, :, ::-1].copy() for p in sorted(folder.iterdir())]
    with BundleSession(art.path, engine="openvino-fp32-e2e", threads=1, hint="throughput") as s:
        stages = s.stages
        assert stages.prepost.input == "uint8" and set(stages.prepare(rgb[0])[0]) == {
            "images_u8",
            "valid_hw",
            "score_thresh",
        }
        want = [s.detect_image(im) for im in rgb]
        got = []
        run_stream(stages, [ArraySource(rgb)], lambda r: got.append(r.detections), requests=2)
    assert len(got) == len(want) and sum(len(d) for d in want) > 0
    for a, b in zip(want, got, strict=True):
        assert a.labels.tolist() == b.labels.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4, rtol=0)


def test_benchmark_runs_every_scenario_on_in_graph_engines(packaged_e2e, tmp_path):
    """`edgefpn benchmark` feeds an in-graph engine its uint8 image and reads its detections: single
    stream (model only and end to end), offline and streaming, beside the raw twin."""
    from edgefpn.pipeline import benchmark
    from tests.conftest import copy_run

    cfg, src, _ = packaged_e2e
    run_dir = copy_run(src, tmp_path / "run")
    # 10 frames asked: two whole passes over the 6 val images
    benchmark.run(
        cfg, run_dir, progress=False, iters=2, app_seconds=0, throughput_seconds=0.1, stream_frames=10
    )
    rows = {r["name"]: r for r in json.loads((run_dir / "benchmark.json").read_text())["engines"]}
    for name in ENGINES:
        row = rows[name]
        assert "skipped" not in row, row
        sc = row["scenarios"]
        assert sc["single_stream"]["end_to_end_ms"]["p50"] > 0 and sc["offline"]["fps"] > 0
        for thresh in ("deploy", "eval"):
            assert (
                sc["streaming"][thresh]["frames"] == 2 * cfg.data.synth.num_val
                and sc["streaming"][thresh]["fps"] > 0
            )
        assert "benchmark_app" not in sc["offline"]  # raw engines only: it feeds one float input
    assert "| openvino-fp32-e2e |" in (run_dir / "benchmark.md").read_text()


def test_a_detections_engine_without_a_threshold_input_is_refused_up_front(tmp_path: Path) -> None:
    """An in-graph engine from before the threshold became an input would fail on the first frame
    (an unknown feed name); the bundle check names it instead."""
    from edgefpn.errors import ModelFileError
    from edgefpn.runtime import _check_engine_io

    shapes = {
        "images_u8": (1, 64, 64, 3),
        "valid_hw": (1, 2),
        "det_boxes": (1, 100, 4),
        "det_scores": (1, 100),
        "det_labels": (1, 100),
        "num_dets": (1,),
    }
    params = {"preprocess": {"input_size": [64, 64]}, "classes": {"num_classes": 2}}
    entry = {"name": "openvino-fp32-e2e", "input": "uint8", "contract": "detections"}
    with pytest.raises(ModelFileError, match="'openvino-fp32-e2e' returns detections but takes no score_thr"):
        _check_engine_io(shapes, params, tmp_path, entry)
    assert _check_engine_io({**shapes, "score_thresh": (1,)}, params, tmp_path, entry) == 1

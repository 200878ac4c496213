"""The tiny run packaged into a bundle (OpenVINO fp32 + ONNX Runtime fp32), shared by the runtime tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgefpn.config import load_config
from edgefpn.pipeline import build, package
from edgefpn.pipeline import data as data_stage
from tests.conftest import copy_run


def video_and_frames(images: list[Path], tmp: Path) -> tuple[Path, Path]:
    """``images`` as an MJPG video in ``tmp``, and that video's frames as decoded, saved losslessly as
    PNG (what `infer` on the same frames reads)."""
    import cv2

    from edgefpn.runtime.scenario import write_video

    path = tmp / "val.avi"
    n = write_video(images, path)
    frames = tmp / "frames"
    frames.mkdir()
    cap = cv2.VideoCapture(str(path))
    for i in range(n):
        ok, bgr = cap.read()
        assert ok
        cv2.imwrite(str(frames / f"{i:06d}.png"), bgr)
    cap.release()
    return path, frames


@pytest.fixture(scope="session")
def packaged(tiny_run, tmp_path_factory):
    overrides, src = tiny_run
    tmp = tmp_path_factory.mktemp("package")
    run_dir = copy_run(src, tmp / "run")
    # check (which package brings up to date) builds what the config asks for: keep it to fp32
    cfg = load_config(None, [*overrides, "quantize.enabled=false", "build.precisions=[fp32]"])
    build.run(cfg, run_dir, targets=["openvino"], precisions=["fp32"], progress=False)
    art = package.run(cfg, run_dir, progress=False)
    images = tmp / "val_images"
    images.mkdir()
    split = data_stage.run(cfg, progress=False).split(cfg.data.val_split)
    for rec in split.images:
        shutil.copy(rec.path, images / Path(rec.path).name)
    return cfg, run_dir, art, images


@pytest.fixture(scope="session")
def packaged_e2e(tiny_run, tmp_path_factory):
    """The tiny run with in-graph engines (uint8 input, decode + NMS in the graph) for ONNX Runtime and
    OpenVINO fp32, beside their raw twins, packaged: (cfg, run_dir, bundle artifact)."""
    overrides, src = tiny_run
    tmp = tmp_path_factory.mktemp("package-e2e")
    run_dir = copy_run(src, tmp / "run")
    cfg = load_config(
        None,
        [
            *overrides,
            "export.input=uint8",
            "export.nms=true",
            "quantize.enabled=false",
            "build.precisions=[fp32]",
            "check.max_images=3",
        ],
    )
    build.run(cfg, run_dir, targets=["openvino"], precisions=["fp32"], progress=False)
    return cfg, run_dir, package.run(cfg, run_dir, progress=False)

"""The tiny run packaged into a bundle (OpenVINO fp32 + ONNX Runtime fp32), shared by the runtime tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgefpn.config import load_config
from edgefpn.pipeline import build, package
from edgefpn.pipeline import data as data_stage
from tests.conftest import copy_run


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

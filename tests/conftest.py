"""Shared test scaffolding: the tiny config, the tiny model builders' arguments, one tiny trained run
(data, model, ONNX) built once per session, and private copies of it for tests that change a run."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.altstack import alternate_stack_state

os.environ.setdefault("OMP_NUM_THREADS", "2")
# as the CLI does: OpenVINO's converter would otherwise fork a process to post usage statistics
if os.environ.get("EDGEFPN_VENDOR_TELEMETRY") != "1":
    sys.modules.setdefault("openvino_telemetry", None)

TINY = [
    "data.synth.num_train=16",
    "data.synth.num_val=6",
    "data.synth.num_calib=6",
    "data.synth.min_side=128",
    "data.synth.max_side=192",
    "model.input_size=[160, 160]",
    "model.fpn_channels=32",
    "model.head_convs=1",
    "train.epochs=1",
    "train.batch_size=4",
    "train.warmup_iters=2",
    "train.eval_every=0",
    "check.latency_iters=3",
    "check.warmup=1",
    # One epoch on 16 images leaves p6/p7 (3x3 and 2x2 maps at 160 px) with a few dozen values whose
    # int8 cosine is noise around 0.97; the production gate is what the default run is held to.
    "check.min_cosine.int8=0.95",
    # A 160 px model with 32 FPN channels runs in ~2 ms, where thread wake-ups and Q/DQ at the graph edges
    # weigh as much as the convolutions, and 3 latency pairs are noise: whether INT8 pays is measured on
    # the default model (benchmarks/ort_int8); the gate itself is tested with check.min_int8_speedup=1.
    "check.min_int8_speedup=0",
]


def tiny_overrides(tmp: Path) -> list[str]:
    """The tiny config's ``--set`` list with its dataset and run directory under ``tmp``."""
    return [*TINY, f"data.root={tmp / 'data'}", f"run.out={tmp / 'run'}"]


# The smallest builder arguments of each model family, for the model tests that build a detector
# directly (the one-stage ones match TINY's model.* settings; Faster R-CNN also slims its RoI head).
_TINY_BUILD = {
    "one_stage": {"backbone_name": "resnet18", "fpn_channels": 32, "head_convs": 1},
    "faster_rcnn": {
        "backbone_name": "resnet18",
        "fpn_channels": 32,
        "backbone_width": 16,
        "representation_size": 64,
    },
}


def tiny_build_kwargs(arch: str = "fcos", **extra: Any) -> dict[str, Any]:
    """A fresh dict of tiny builder arguments for ``arch`` (``num_classes`` not included), plus ``extra``."""
    return {**_TINY_BUILD["faster_rcnn" if arch == "faster_rcnn" else "one_stage"], **extra}


def copy_run(src: Path, dst: Path, *, ignore: Callable[[str, list[str]], set[str]] | None = None) -> Path:
    """A private copy of a run (or data) folder at ``dst``, to modify; ``ignore`` as ``shutil.copytree``'s."""
    shutil.copytree(src, dst, ignore=ignore)
    return dst


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[list[str], Path]:
    """A tiny run directory after `export`: (overrides, run_dir). Do not modify it in tests."""
    from edgefpn.config import load_config
    from edgefpn.pipeline import export

    tmp = tmp_path_factory.mktemp("tiny")
    overrides = tiny_overrides(tmp)
    cfg = load_config(None, overrides)
    export.run(cfg, Path(cfg.run.out), progress=False)
    return overrides, Path(cfg.run.out)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> tuple[list[str], Path]:
    """(overrides, run_dir) of a private copy of the tiny run at ``tmp_path / "run"``: change it freely."""
    overrides, src = tiny_run
    return overrides, copy_run(src, tmp_path / "run")


@pytest.fixture
def trt():
    """The tensorrt module on a machine with a CUDA GPU, else a skip that says what is missing."""
    from edgefpn.backends.tensorrt import cuda_device

    module = pytest.importorskip(
        "tensorrt", reason="tensorrt is not installed (pip install tensorrt, NVIDIA GPU)"
    )
    if cuda_device() is None:
        pytest.skip("no CUDA GPU visible (torch.cuda.is_available() is false)")
    return module


@pytest.fixture(autouse=True)
def _signals_stay_deliverable():
    """Fail the test that leaves the main thread's alternate signal stack pointing at unmapped memory.

    The next signal Python handles would then segfault the suite (or corrupt its heap) in whatever
    test runs later; OpenVINO CPU plugins released out of order did that (see
    ``edgefpn.backends.openvino.shared_core``), and this names the test that does it.
    """
    yield
    if sys.platform.startswith("linux"):
        assert alternate_stack_state() != "unmapped", (
            "the main thread's alternate signal stack was unmapped during this test: the next "
            "signal with a Python handler would crash the process"
        )

"""Fixtures of the fault tests: a tiny run that has been through `check` (ONNX Runtime engine only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import copy_run

# check keeps to the exported ONNX: no quantize, no OpenVINO / TensorRT build (cheap on 2 cores)
CHECK_ONLY_ORT = ("quantize.enabled=false", "build.targets=[]", "check.backends=[onnxruntime]")


@pytest.fixture(scope="session")
def checked_run(tiny_run, tmp_path_factory) -> tuple[list[str], Path]:
    """(overrides, run_dir) of a copy of the tiny run after `check`. Do not modify it: copy it."""
    from edgefpn.config import load_config
    from edgefpn.pipeline import check

    overrides, src = tiny_run
    run_dir = copy_run(src, tmp_path_factory.mktemp("checked") / "run")
    overrides = [*overrides, *CHECK_ONLY_ORT]
    check.run(load_config(None, overrides), run_dir, progress=False)
    return overrides, run_dir


@pytest.fixture
def data_root(tiny_run) -> Path:
    """The tiny run's dataset folder (beside its run directory)."""
    return tiny_run[1].parent / "data"

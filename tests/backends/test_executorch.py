"""ExecuTorch (XNNPACK) on the tiny run: a .pte from model.pt, its own row in check's report, in the
bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefpn.config import load_config
from tests.conftest import copy_run

pytest.importorskip(
    "executorch.runtime", reason="needs the executorch extra: pip install 'edgefpn[executorch]'"
)
pytestmark = pytest.mark.executorch

OPT_IN = [
    "build.targets=[executorch]",
    "check.backends=[onnxruntime, executorch]",
    "quantize.enabled=false",
    "check.max_images=3",
]


@pytest.fixture(scope="module")
def et_run(tiny_run, tmp_path_factory):
    overrides, src = tiny_run
    run_dir = copy_run(src, tmp_path_factory.mktemp("et") / "run")
    return [*overrides, *OPT_IN], run_dir


def test_build_writes_a_pte_that_matches_the_torch_reference(et_run):
    from edgefpn.backends import EngineSpec, open_runner
    from edgefpn.pipeline import build

    overrides, run_dir = et_run
    cfg = load_config(None, overrides)
    (art,) = build.run(cfg, run_dir, progress=False)
    assert art.path == run_dir / "executorch/fp32/model.pte"
    m = art.manifest
    assert m["target"] == "executorch" and m["source"]["path"] == "model.pt"
    assert m["settings"]["delegate"] == "xnnpack" and len(m["outputs"]) == 15
    # up to date: the same manifest, nothing rebuilt
    (again,) = build.run(cfg, run_dir, progress=False)
    assert again.manifest == m

    x = np.random.default_rng(0).standard_normal((1, 3, 160, 160)).astype(np.float32)
    with (
        open_runner(EngineSpec("torch-fp32", "torch", "fp32", run_dir / "model.pt"), threads=1) as ref,
        open_runner(EngineSpec("executorch-fp32", "executorch", "fp32", art.path), threads=1) as et,
    ):
        want, got = ref.infer({"images": x}), et.infer({"images": x})
        assert et.io_shapes()["images"] == (1, 3, 160, 160)
    assert list(got) == list(want)
    for name, ref_out in want.items():
        assert got[name].shape == ref_out.shape
        np.testing.assert_allclose(got[name], ref_out, rtol=1e-3, atol=1e-4, err_msg=name)


def test_check_reports_an_executorch_row_and_package_bundles_it(et_run):
    from edgefpn.bundle import read_verified
    from edgefpn.pipeline import package
    from edgefpn.runtime import select_engine

    overrides, run_dir = et_run
    cfg = load_config(None, overrides)
    art = package.run(cfg, run_dir, progress=False)  # brings build and check up to date first
    report = json.loads((run_dir / "report.json").read_text())
    rows = {e["name"]: e for e in report["engines"]}
    assert set(rows) == {"torch-fp32", "onnxruntime-fp32", "executorch-fp32"}
    et = rows["executorch-fp32"]
    assert et["gates"]["passed"], et["gates"]["failed"]
    assert et["backend"] == "executorch" and et["path"] == "executorch/fp32/model.pte"
    assert min(s["cosine"] for s in et["outputs"].values()) >= cfg.check.min_cosine["fp32"]
    assert "executorch-fp32" in (run_dir / "report.md").read_text()

    manifest = read_verified(art.path)
    entry = next(e for e in manifest["engines"] if e["name"] == "executorch-fp32")
    assert entry["target"] == {
        "backend": "executorch",
        "precision": "fp32",
        "version": et_version(),
        "delegate": "xnnpack",
    }
    assert "executorch/fp32/model.pte.manifest.json" in manifest["files"]  # its output names travel with it
    assert select_engine(manifest, art.path, name="executorch-fp32", log=lambda _: None) is not None


def et_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("executorch")

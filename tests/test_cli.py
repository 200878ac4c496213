"""The CLI's contract: one line naming the file and the problem, non-zero exit, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefpn.cli import main
from tests.conftest import tiny_overrides


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def sets(overrides):
    out = []
    for o in overrides:
        out += ["--set", o]
    return out


def files(folder: Path) -> dict[str, int]:
    return (
        {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")} if folder.exists() else {}
    )


def test_help_everywhere():
    for cmd in ([], ["data"], ["data", "synth"], ["train"], ["export"], ["check"], ["run"], ["predict"]):
        res = invoke(*cmd, "--help")
        assert res.exit_code == 0, res.output
        assert "Usage:" in res.output


def test_unknown_config_key_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epoch: 1\n")
    res = invoke("train", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and str(cfg) in lines[0] and "train.epoch" in lines[0]
    assert "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_dataset_without_annotations(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    run = tmp_path / "run"
    res = invoke("train", "--set", f"data.root={root}", "--set", "data.builtin=false", "--out", str(run))
    assert res.exit_code == 2
    assert "instances_train.json" in res.output and "not found" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not run.exists()


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a whole zip")
    run = tmp_path / "run"
    res = invoke("train", "--set", f"model.weights={bad}", "--set", "model.num_classes=6", "--out", str(run))
    assert res.exit_code == 2, res.output
    assert str(bad) in res.output and len(res.output.strip().splitlines()) == 1
    assert files(run) == {}


def test_checkpoint_that_does_not_fit(tiny_run, tmp_path):
    overrides, run_dir = tiny_run
    run = tmp_path / "run"
    # the tiny model has fpn_channels=32; ask for 64 so every FPN/head shape mismatches
    res = invoke(
        "train",
        *sets(tiny_overrides(tmp_path)),
        "--set",
        f"model.weights={run_dir / 'model.pt'}",
        "--set",
        "model.fpn_channels=64",
        "--out",
        str(run),
    )
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert str(run_dir / "model.pt") in line and "shape mismatch" in line
    assert files(run) == {}


def test_builder_refused_setting_names_the_config_file(tiny_run, tmp_path):
    # valid for the config schema, refused by the Faster R-CNN builder: v2 exists for ResNet-50 only
    _, run_dir = tiny_run
    cfg = tmp_path / "mobilenet_v2.yaml"
    cfg.write_text(
        f"model:\n  arch: faster_rcnn\n  backbone: mobilenet_v3_large\n  variant: v2\n"
        f"  num_classes: 6\n  weights: {run_dir / 'model.pt'}\n"
    )
    run = tmp_path / "run"
    res = invoke("train", "--config", str(cfg), "--out", str(run))
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert line.startswith(f"error: {cfg}: model: variant 'v2' exists for ResNet-50 only"), line
    assert files(run) == {}


def test_debug_shows_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nope: 1\n")
    with pytest.raises(Exception, match="unknown key nope"):
        CliRunner().invoke(main, ["--debug", "train", "--config", str(cfg)], catch_exceptions=False)


def _val_images(overrides: list[str], tmp_path: Path, n: int = 3):
    """The tiny run's first ``n`` val images copied into a folder of their own: (folder, val split)."""
    from edgefpn.config import load_config
    from edgefpn.pipeline import data as data_stage

    split = data_stage.run(load_config(None, overrides), progress=False).split("val")
    images = tmp_path / "images"
    images.mkdir()
    for rec in split.images[:n]:
        (images / rec.path.name).write_bytes(rec.path.read_bytes())
    return images, split


def _predict(run_copy, images: Path, backend: str, out: Path, *sets_: str) -> list[dict]:
    """``edgefpn predict`` on a copy of the tiny run (a postprocess setting re-exports it); its saved
    detections."""
    import json

    overrides, run_dir = run_copy
    # an explicit empty config: without --config the CLI reads configs/default.yaml, whose settings
    # differ from tiny_run's and would retrain into the shared tiny run directory
    empty = out.parent / "empty.yaml"
    empty.write_text("{}\n")
    res = invoke(
        "predict",
        "--config",
        str(empty),
        *sets(overrides),
        "--out",
        str(run_dir),
        "--backend",
        backend,
        "--images",
        str(images),
        "--save",
        str(out),
        *sets(sets_),
    )
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def test_predict_torch_and_onnxruntime_agree(run_copy, tmp_path):
    images, split = _val_images(run_copy[0], tmp_path)
    saved = {
        backend: _predict(
            run_copy, images, backend, tmp_path / f"{backend}.json", "postprocess.score_thresh=0.0"
        )
        for backend in ("torch", "onnxruntime")
    }
    torch_dets, ort_dets = saved["torch"], saved["onnxruntime"]
    assert torch_dets and len(torch_dets) == len(ort_dets)
    names = {p.name for p in images.iterdir()}
    widths = {rec.path.name: rec.width for rec in split.images}
    # at score_thresh 0 an under-trained model has near-tied scores whose order may differ between
    # backends, so each torch detection is matched to an unused ORT one rather than compared by position
    unused = list(ort_dets)
    for a in torch_dets:
        assert set(a) == {"file_name", "category_id", "bbox", "score"} and a["file_name"] in names
        match = next(
            (
                b
                for b in unused
                if b["file_name"] == a["file_name"]
                and b["category_id"] == a["category_id"]
                and abs(a["score"] - b["score"]) < 1e-4
                and max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"], strict=True)) < 1e-2
            ),
            None,
        )
        assert match is not None, f"no ONNX Runtime detection matches {a}"
        unused.remove(match)
        x, _, w, _ = a["bbox"]
        assert x >= 0 and x + w <= widths[a["file_name"]] + 1e-3  # original image pixels


def test_predict_keeps_the_deployment_threshold(run_copy, tmp_path):
    # deploy.score_thresh t: exactly the evaluation threshold's detections that score above t
    images, _ = _val_images(run_copy[0], tmp_path)

    def predict(*extra: str) -> list[dict]:
        return _predict(
            run_copy, images, "onnxruntime", tmp_path / "dets.json", "postprocess.score_thresh=0.0", *extra
        )

    everything = predict()
    t = float(np.median([d["score"] for d in everything]))
    kept = predict(f"deploy.score_thresh={t}")
    assert 0 < len(kept) < len(everything)
    assert kept == [d for d in everything if d["score"] > t]


def test_predict_missing_folder(tiny_run, tmp_path):
    overrides, run_dir = tiny_run
    res = invoke("predict", *sets(overrides), "--out", str(run_dir), "--images", str(tmp_path / "nope"))
    assert res.exit_code == 2 and "image folder not found" in res.output


def test_cli_keeps_vendor_telemetry_off(tmp_path):
    # a fresh interpreter: once the CLI has run, OpenVINO's converter gets its telemetry stub
    import subprocess
    import sys

    code = (
        "import sys\nfrom edgefpn.cli import main\n"
        "try:\n    main(['trt-lint', sys.argv[1]])\nexcept SystemExit:\n    pass\n"
        "import openvino.tools.ovc.convert_impl as c\nprint(c.tm.__name__)"
    )
    missing = tmp_path / "none.onnx"
    env = {k: v for k, v in __import__("os").environ.items() if k != "EDGEFPN_VENDOR_TELEMETRY"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(missing)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.stdout.strip().splitlines()[-1] == "openvino.tools.ovc.telemetry_stub", out.stderr

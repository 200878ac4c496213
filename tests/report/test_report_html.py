"""report.html on a real tiny run, and fault injection: a perturbed engine fails and is named by level."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import edgefpn.backends
from edgefpn.backends.onnxruntime import OnnxRuntimeRunner
from edgefpn.checking.gates import gates, raise_on_failures
from edgefpn.checking.latency import int8_speedups
from edgefpn.config import load_config
from edgefpn.errors import CheckFailed
from edgefpn.pipeline import check
from edgefpn.report.check_html import render_html, ship_choice
from tests.conftest import copy_run

FAST = ["check.backends=[onnxruntime]", "check.max_images=2"]


@pytest.fixture(scope="module")
def checked(tiny_run, tmp_path_factory):
    """A copy of the tiny run after a passing `check` (torch reference + ONNX Runtime)."""
    overrides, src = tiny_run
    run_dir = copy_run(src, tmp_path_factory.mktemp("html") / "run")
    check.run(load_config(None, [*overrides, "check.backends=[onnxruntime]"]), run_dir, progress=False)
    return overrides, run_dir, json.loads((run_dir / "report.json").read_text())


def test_report_has_samples_and_flops(checked):
    _, _, report = checked
    for e in report["engines"]:
        mo = e["latency"]["model_only"]
        assert len(mo["samples_ms"]) == mo["samples"] == 3
        # the peak uses the nominal clock a VM reports; turbo can take an engine somewhat past it
        assert e["achieved_gflops"] > 0 and 0 < e["fraction_of_peak"] < 2
    assert report["flops"]["gflops_per_image"] > 0.01 and "2 x MACs" in report["flops"]["convention"]
    assert report["flops"]["peak"]["fp32_gflops"] > 0


def test_report_html_is_self_contained(checked):
    _, run_dir, report = checked
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<title>edgefpn check report</title>" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3  # accuracy vs latency, per-level error, latency distribution
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    # the headline names the fastest (end-to-end p50) engine that passed every gate, never the reference
    choice = ship_choice(report)["engine"]["name"]
    passing = [e for e in report["engines"] if e["gates"]["passed"] and e["name"] != "torch-fp32"]
    assert choice == min(passing, key=lambda e: e["latency"]["end_to_end"]["p50"])["name"]
    assert f"Ship <code>{choice}</code>" in page
    assert "GFLOP/s" in page and report["machine"]["versions"]["onnxruntime"] in page
    # every engine's end to end against its model-only, with the ratio the headline shows
    e = next(e for e in report["engines"] if e["name"] == choice)
    ratio = e["latency"]["end_to_end"]["p50"] / e["latency"]["model_only"]["p50"]
    assert "End to end vs model only" in page and page.count(f"{ratio:.2f}×") >= 2
    assert render_html(report).count("data:image/png;base64,") == 3  # re-rendered from report.json alone


def _perturbing(fn):
    class Perturbed(OnnxRuntimeRunner):
        def infer(self, feed):
            return fn(super().infer(feed))

    return Perturbed


def _scale_cls_p5(out):
    return out | {"cls_p5": out["cls_p5"] * 1.5}


def _nan_box_p4(out):
    bad = out["box_p4"].copy()
    bad[0, 0, 0, 0] = np.nan
    return out | {"box_p4": bad}


@pytest.mark.parametrize(
    ("perturb", "output", "needle"),
    [
        (_scale_cls_p5, "cls_p5", "SNR"),  # scaling keeps cosine at 1: the SNR floor catches it
        (_nan_box_p4, "box_p4", "NaN/Inf"),
    ],
)
def test_perturbed_engine_fails_and_names_the_level(checked, tmp_path, monkeypatch, perturb, output, needle):
    overrides, src, _ = checked
    run_dir = copy_run(src, tmp_path / "run")
    monkeypatch.setitem(edgefpn.backends.RUNNERS, "onnxruntime", _perturbing(perturb))
    level = output.split("_")[1]
    with pytest.raises(CheckFailed, match=f"onnxruntime-fp32: {output}: .*{needle}.*\\(level {level}\\)"):
        check.run(load_config(None, [*overrides, *FAST]), run_dir, progress=False)
    report = json.loads((run_dir / "report.json").read_text())
    ort = next(e for e in report["engines"] if e["name"] == "onnxruntime-fp32")
    assert not ort["gates"]["passed"]
    assert all(f"level {level}" in g for g in ort["gates"]["failed"])  # only the perturbed level fails
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "No engine to ship" in page and f"{output}: " in page and "<tr class='fail'>" in page


class _RunsFourTimesWhenInt8(OnnxRuntimeRunner):
    """An INT8 engine that really computes its model four times per call: honestly slower, not a faked
    timing."""

    def infer(self, feed):
        for _ in range(3 if self.spec.precision == "int8" else 0):
            super().infer(feed)
        return super().infer(feed)


def test_int8_engine_slower_than_fp32_fails_with_one_line(checked):
    """check's paired timing and gate on real runners (not a whole re-check: that costs ~40 s here)."""
    import contextlib

    from edgefpn.backends import EngineSpec
    from edgefpn.pipeline import data as data_stage
    from edgefpn.pipeline.common import make_prepost
    from edgefpn.report.check_md import render_markdown

    overrides, run_dir, report = checked
    cfg = load_config(None, [*overrides, *FAST, "check.latency_iters=4", "check.min_int8_speedup=1"])
    records = data_stage.run(cfg, progress=False).split(cfg.data.val_split).images
    specs = [
        EngineSpec("onnxruntime-fp32", "onnxruntime", "fp32", run_dir / "model.onnx"),
        EngineSpec("onnxruntime-int8", "onnxruntime", "int8", run_dir / "model.int8.ort.onnx"),
    ]
    with contextlib.ExitStack() as stack:
        runners = {s.name: stack.enter_context(_RunsFourTimesWhenInt8(s, threads=1)) for s in specs}
        speed = int8_speedups(runners, specs, make_prepost(cfg), records, cfg)["onnxruntime-int8"]
    assert speed["vs"] == "onnxruntime-fp32" and speed["pairs"] == 4 and speed["speedup"] < 1
    entry = next(e for e in report["engines"] if e["name"] == "onnxruntime-int8") | {"int8_speedup": speed}
    result = gates(entry, cfg, is_reference=False)
    (line,) = result["failed"]
    assert re.fullmatch(
        r"INT8 is slower than onnxruntime-fp32: 0\.\d\dx its speed, model only \(.* over 4 "
        r"interleaved pairs; check.min_int8_speedup 1\)",
        line,
    )
    with pytest.raises(CheckFailed, match="1 gate\\(s\\) failed: onnxruntime-int8: INT8 is slower than"):
        raise_on_failures([f"onnxruntime-int8: {g}" for g in result["failed"]], run_dir / "report.json")
    failing = report | {
        "engines": [e if e["name"] != entry["name"] else entry | {"gates": result} for e in report["engines"]]
    }
    assert "| onnxruntime-int8 | onnxruntime-fp32 |" in render_markdown(failing)
    assert "FAIL (≥ 1×)" in render_html(failing)


def test_paired_speedup_is_in_the_report(checked):
    _, run_dir, report = checked
    speed = next(e for e in report["engines"] if e["name"] == "onnxruntime-int8")["int8_speedup"]
    assert speed["vs"] == "onnxruntime-fp32" and speed["pairs"] == 3 and speed["speedup"] > 0
    assert f"{speed['speedup']:.2f}×" in (run_dir / "report.html").read_text(encoding="utf-8")


def test_gallery_images_are_inline_in_the_page(checked):
    _, run_dir, report = checked
    gallery = report["gallery"]
    shown = [(name, e) for name, entries in gallery["engines"].items() for e in entries]
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    jpegs = re.findall(r"src='data:image/jpeg;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(jpegs) == len(shown) and all(base64.b64decode(j).startswith(b"\xff\xd8") for j in jpegs)
    assert "Where engines disagree with the reference" in page
    for _, e in shown:
        assert e["missed"] + e["extra"] + e["flips"] > 0 and f"image {e['image_id']}: " in page


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed (apt-get install -y chromium); the page is checked without it",
)
def test_screenshot_in_headless_chromium(checked, tmp_path):
    _, run_dir, _ = checked
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1800",
            f"--screenshot={shot}",
            (run_dir / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 1800)
        colours = img.convert("RGB").resize((64, 90)).getcolors(64 * 90)
    assert colours is not None and len(colours) > 50  # a rendered page with plots, not a blank canvas

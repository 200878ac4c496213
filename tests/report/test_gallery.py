"""The disagreement gallery on a synthetic image: which boxes are missed / extra, and the page shows them."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from edgefpn.postprocess import Detections
from edgefpn.report.gallery import COLOURS, Gallery, disagreement, render


def _det(boxes, scores, labels) -> Detections:
    return Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32),
        np.asarray(labels, np.int64),
    )


REF = _det([[10, 10, 60, 60], [100, 100, 180, 160]], [0.9, 0.8], [0, 1])
TEST = _det([[12, 11, 61, 60], [20, 120, 70, 190], [101, 99, 181, 161]], [0.85, 0.7, 0.1], [0, 2, 1])


def test_disagreement_marks_missed_extra_and_matched() -> None:
    d = disagreement(REF, TEST)
    assert d["ref_status"] == ["matched", "matched"] and d["test_status"] == ["matched", "extra", "matched"]
    # at the deploy threshold the low-score twin of the second reference box is gone: it is missed
    gallery = Gallery(score_thresh=0.5, per_engine=2)
    gallery.update("e", "img.png", 7, REF, TEST)
    (entry,) = gallery.compute(["e"])["engines"]["e"]
    assert (entry["missed"], entry["extra"], entry["flips"]) == (1, 1, 0)
    assert [b[-1] for b in entry["ref"]] == ["matched", "missed"] and [b[-1] for b in entry["test"]] == [
        "matched",
        "extra",
    ]


def test_gallery_keeps_the_worst_images_and_draws_them_inline(tmp_path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (240, 200), (200, 200, 200)).save(img)
    gallery = Gallery(score_thresh=0.5, per_engine=2)
    for image_id, test in enumerate([TEST, _det([], [], []), REF]):  # 2, 2 and 0 disagreements
        gallery.update("onnxruntime-int8", img, image_id, REF, test)
    gallery.update("openvino-fp32", img, 0, REF, REF)
    section = gallery.compute(["onnxruntime-int8", "openvino-fp32"])
    assert [e["image_id"] for e in section["engines"]["onnxruntime-int8"]] == [0, 1]
    assert section["engines"]["openvino-fp32"] == []
    html = render({"gallery": section})
    jpegs = re.findall(r"src='data:image/jpeg;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(jpegs) == 2 and "no disagreement at this threshold" in html
    with Image.open(io.BytesIO(base64.b64decode(jpegs[1]))) as thumb:  # image 1: both reference boxes missed
        pixels = np.asarray(thumb.convert("RGB"), np.int16)
    assert max(thumb.size) == 320
    red = np.abs(pixels - np.asarray(COLOURS["missed"])).sum(axis=2) < 60
    assert red.sum() > 100  # the missed boxes are drawn, thick, in the 'missed' colour
    assert render({}) == ""


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed (apt-get install -y chromium); the page is checked without it",
)
def test_gallery_renders_in_headless_chromium(tmp_path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (240, 200), (255, 255, 255)).save(img)
    gallery = Gallery(score_thresh=0.5)
    gallery.update("onnxruntime-int8", img, 0, REF, _det([], [], []))
    page = tmp_path / "g.html"
    page.write_text(
        f"<!DOCTYPE html><html><body>{render({'gallery': gallery.compute(['onnxruntime-int8'])})}"
        "</body></html>",
        encoding="utf-8",
    )
    shot = tmp_path / "g.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=800,600",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(shot) as s:
        pixels = np.asarray(s.convert("RGB"), np.int16)
    red = np.abs(pixels - np.asarray(COLOURS["missed"])).sum(axis=2) < 60
    assert red.sum() > 100  # the thumbnail, with its missed boxes, is on the rendered page

"""No empty or vacuous results. Each case is one ``error:`` line with exit 2 (bad
input: the README's code for a dataset or setting that cannot work), no traceback, and the user's
files and the run directory as they were; or, for what can be skipped, a line saying what and why.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import copy_run
from tests.faults.conftest import CHECK_ONLY_ORT
from tests.security.harness import cli, predict_args, refused, snapshot, tiny_sets


def _ann_file(data: Path, split: str) -> Path:
    return data / "annotations" / f"instances_{split}.json"


def _edit_annotations(data: Path, split: str, edit) -> Path:
    path = _ann_file(data, split)
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))
    return path


def test_a_val_split_without_annotations_fails_check_and_quantize(checked_run, data_root, tmp_path):
    _, src = checked_run
    run = copy_run(src, tmp_path / "run")
    data = copy_run(data_root, tmp_path / "data")
    val = _edit_annotations(data, "val", lambda coco: coco.update(annotations=[]))
    before = snapshot(tmp_path)
    res = cli(
        "check", *tiny_sets(*CHECK_ONLY_ORT, "data.builtin=false", data_root=data), "--out", run, "--quiet"
    )
    refused(
        res,
        names=[val],
        problem=r"no usable annotations on the 6 image\(s\) of split 'val'.*"
        r"check's mAP gate has nothing to measure",
    )
    res = cli("quantize", *tiny_sets("data.builtin=false", data_root=data), "--out", run, "--quiet")
    refused(res, names=[val], problem=r"quantize's mAP-in-the-loop check has nothing to measure")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("setting", "named", "problem"),
    [
        ("train.batch_size=17", "train.batch_size", r"larger than the 16 training images of .*: .* no step"),
        ("train.epochs=0", "train.epochs", r"train.epochs is 0: training would take no step"),
        (
            "no-boxes",
            "instances_train.json",
            r"no usable annotations on the 16 training images.*nothing to learn",
        ),
    ],
)
def test_training_that_would_take_no_step_is_refused(data_root, tmp_path, setting, named, problem):
    data = copy_run(data_root, tmp_path / "data")
    sets = ["data.builtin=false"]
    if setting == "no-boxes":
        _edit_annotations(data, "train", lambda coco: coco.update(annotations=[]))
    else:
        sets.append(setting)
    before = snapshot(tmp_path)
    res = cli("train", *tiny_sets(*sets, data_root=data), "--out", tmp_path / "run", "--quiet")
    refused(res, names=[named], problem=problem)
    assert snapshot(tmp_path) == before  # no untrained model.pt, no run directory


def test_coco_width_height_must_match_the_image(data_root, tmp_path):
    data = copy_run(data_root, tmp_path / "data")
    ann = _ann_file(data, "train")
    coco = json.loads(ann.read_text())
    first = coco["images"][0]
    real = (first["width"], first["height"])
    before_edit = ann.read_text()

    # boxes outside the image: every dropped annotation is counted, not one line per image
    crowded = max(coco["images"], key=lambda im: sum(a["image_id"] == im["id"] for a in coco["annotations"]))
    moved = [a for a in coco["annotations"] if a["image_id"] == crowded["id"]]
    assert len(moved) >= 2
    for a in moved:
        a["bbox"][0] = crowded["width"] + 5
    ann.write_text(json.dumps(coco))
    res = cli("data", *tiny_sets("data.builtin=false", data_root=data), "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert f"train: 16 images, {len(moved)} annotations skipped" in res.output

    ann.write_text(before_edit)
    _edit_annotations(data, "train", lambda c: c["images"][0].update(width=real[0] // 2, height=real[1] // 2))
    before = snapshot(tmp_path)
    res = cli("data", *tiny_sets("data.builtin=false", data_root=data), "--out", tmp_path / "run", "--quiet")
    refused(
        res,
        names=[data / "images" / first["file_name"], ann],
        problem=rf"image is {real[0]}x{real[1]} pixels but .* records width x height "
        rf"{real[0] // 2}x{real[1] // 2}",
    )
    assert snapshot(tmp_path) == before


def _png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)


def test_predict_says_what_it_skips_and_refuses_float_pixels(tiny_run, tmp_path):
    _, src = tiny_run
    run = copy_run(src, tmp_path / "run")
    images = tmp_path / "images"
    images.mkdir()
    _png(images / "a.png")
    Image.new("P", (30, 20)).save(images / "b.gif")
    (images / "notes.txt").write_text("not an image")
    before = snapshot(images)
    res = cli(*predict_args(run, images, data_root=src.parent / "data", save=tmp_path / "dets.json"))
    assert res.exit_code == 0, res.output
    warning = next(line for line in res.output.splitlines() if line.startswith("warning:"))
    assert (
        f"{images}: skipped 2 of 3 entries" in warning
        and "b.gif (not jpg/" in warning
        and "notes.txt" in warning
    )

    assert snapshot(images) == before
    floats = tmp_path / "floats"  # a float32 TIFF (0..1) decoded all black before: refused now
    floats.mkdir()
    _png(floats / "a.png")
    tif = floats / "c.tif"
    Image.fromarray(np.random.default_rng(1).random((20, 30), dtype=np.float32), mode="F").save(tif)
    before = snapshot(tmp_path)
    res = cli(*predict_args(run, floats, data_root=src.parent / "data", save=tmp_path / "dets2.json"))
    refused(res, names=[tif], problem=r"32-bit floating-point pixels \(mode F\) have no defined 0-255 range")
    assert snapshot(tmp_path) == before

"""Hostile COCO annotation files (``edgefpn data``) and hostile images
(``edgefpn predict``): clear errors or clearly reported skips, never a read outside the dataset.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from edgefpn.data.coco import MAX_ANNOTATIONS_PER_IMAGE
from tests.security.harness import OpenWatch, cli, refused, snapshot, tiny_sets


def _png(width: int = 8, height: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _coco(images, annotations, categories=None) -> dict:
    return {
        "images": images,
        "annotations": annotations,
        "categories": categories if categories is not None else [{"id": 1, "name": "box"}],
    }


def _img(i: int, name: str) -> dict:
    return {"id": i, "file_name": name, "width": 8, "height": 6}


def _ann(i: int, bbox, image_id: int = 1, category_id: int = 1) -> dict:
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0}


GOOD = _coco([_img(1, "a.png")], [_ann(1, [1, 1, 4, 3])])


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Path]:
    """tmp/ds (images/a.png, annotations for train and val) and tmp/secret.png outside it."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    (root / "images" / "a.png").write_bytes(_png())
    (root / "annotations" / "instances_val.json").write_text(json.dumps(GOOD))
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png())
    (root / "images" / "escape.png").symlink_to(secret)
    return {"root": root, "secret": secret, "train": root / "annotations" / "instances_train.json"}


def _data(tmp: Path, root: Path, *extra: str):
    return cli("data", *tiny_sets(f"data.root={root}", "data.builtin=false"), "--out", tmp / "run", *extra)


REFUSED = {
    "malformed-json": ('{"images": [', r"malformed JSON"),
    "wrong-type": (
        json.dumps({"images": {}, "annotations": [], "categories": []}),
        r"'images' must be a list",
    ),
    "dotdot-file-name": (
        json.dumps(_coco([_img(1, "../secret.png")], [])),
        r"images\[0\]\.file_name '\.\./secret\.png' is not a relative path inside",
    ),
    "absolute-file-name": (
        lambda secret: json.dumps(_coco([_img(1, str(secret))], [])),
        r"images\[0\]\.file_name '/.*secret\.png' is not a relative path inside",
    ),
    "symlink-file-name": (
        json.dumps(_coco([_img(1, "escape.png")], [])),
        r"images\[0\]\.file_name 'escape\.png' is not a relative path inside",
    ),
    "bbox-not-numbers": (
        json.dumps(_coco([_img(1, "a.png")], [_ann(1, ["1", 2, 3, 4])])),
        r"annotations\[0\]\.bbox must be a list of 4 numbers",
    ),
    "too-many-on-one-image": (
        json.dumps(
            _coco([_img(1, "a.png")], [_ann(i, [1, 1, 2, 2]) for i in range(MAX_ANNOTATIONS_PER_IMAGE + 1)])
        ),
        rf"image 1 has more than {MAX_ANNOTATIONS_PER_IMAGE} annotations",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_annotation_file_is_one_line_and_reads_nothing_outside(tmp_path, dataset, case):
    content, problem = REFUSED[case]
    dataset["train"].write_text(content(dataset["secret"]) if callable(content) else content)
    before = snapshot(tmp_path)
    with OpenWatch([dataset["secret"]]) as watch:
        res = _data(tmp_path, dataset["root"], "--quiet")
    refused(res, names=[dataset["train"]], problem=problem)
    assert watch.opened == []
    assert snapshot(tmp_path) == before


def test_bad_boxes_and_categories_are_skipped_and_reported(tmp_path, dataset):
    anns = [
        _ann(1, [1, 1, 4, 3]),
        _ann(2, [1, 1, -4, 3]),
        _ann(3, [1, 1, float("nan"), 3]),
        _ann(4, [1, 1, 4, 0]),
        _ann(5, [1, 1, 2, 2], category_id=77),
        _ann(6, [1, 1, 2, 2], image_id=9),
    ]
    dataset["train"].write_text(json.dumps(_coco([_img(1, "a.png")], anns)))  # NaN is written as NaN
    res = _data(tmp_path, dataset["root"])
    assert res.exit_code == 0, res.output
    assert "train: 1 images, 5 annotations skipped" in res.output
    line = next(s for s in res.output.splitlines() if s.startswith("[data]") and "skipped 5" in s)
    assert str(dataset["train"]) in line
    for reason in (
        "non-positive width or height [1.0, 1.0, -4.0, 3.0]",
        "non-finite bbox [1.0, 1.0, nan, 3.0]",
        "non-positive width or height [1.0, 1.0, 4.0, 0.0]",
    ):
        assert reason in line
    # --quiet still says how many were skipped
    quiet = _data(tmp_path, dataset["root"], "--quiet")
    assert quiet.exit_code == 0 and "5 annotations skipped" in quiet.output


# ------------------------------------------------------------------------------------------------
# images, through `edgefpn predict`


def _bomb_png(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header claims ``width x height``: the decoder would allocate it all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


IMAGES = {
    "truncated": (lambda: _png(64, 64)[:60], r"cannot decode image"),
    "zero-byte": (lambda: b"", r"empty file \(0 bytes\)"),
    "bomb-past-2x-limit": (
        lambda: _bomb_png(20_000, 20_000),
        r"cannot decode image \(DecompressionBombError|decompression bomb",
    ),
    "bomb-past-limit": (lambda: _bomb_png(10_000, 10_000), r"decompression bomb|DecompressionBomb"),
    "unsupported-svg": (
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        r"not an image file Pillow can read",
    ),
    "unsupported-pdf": (
        lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n",
        r"not an image file Pillow can read",
    ),
}


@pytest.mark.parametrize("case", sorted(IMAGES))
def test_bad_image_is_one_line(tiny_run, tmp_path, case, monkeypatch):
    overrides, run_dir = tiny_run
    make, problem = IMAGES[case]
    images = tmp_path / "images"
    images.mkdir()
    (images / "a_good.png").write_bytes(_png(40, 30))
    bad = images / "b_bad.png"
    bad.write_bytes(make())
    save = tmp_path / "dets.json"
    before = snapshot(run_dir)
    res = cli(
        "predict",
        *tiny_sets(data_root=run_dir.parent / "data"),
        "--out",
        run_dir,
        "--images",
        images,
        "--save",
        save,
        "--quiet",
    )
    refused(res, names=[bad], problem=problem)
    assert not save.exists() and snapshot(run_dir) == before


def test_pillow_bomb_check_cannot_be_switched_off(tmp_path, monkeypatch):
    """Another library setting Image.MAX_IMAGE_PIXELS = None does not turn our own check off."""
    from edgefpn.data.preprocess import MAX_IMAGE_PIXELS, load_image
    from edgefpn.errors import DataError

    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS >= MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(20_000, 20_000))
    with pytest.raises(DataError, match=r"bomb\.png: image is 20000x20000 pixels.*decompression bomb"):
        load_image(bomb)


def test_dataset_folder_is_not_modified_by_a_refused_split(tmp_path, dataset):
    """The refused dataset stays byte-identical (no cache, index or repaired copy written into it)."""
    shutil.copy(dataset["root"] / "annotations" / "instances_val.json", dataset["train"])
    assert _data(tmp_path, dataset["root"], "--quiet").exit_code == 0
    dataset["train"].write_text('{"images": [')
    before = snapshot(dataset["root"])
    assert _data(tmp_path, dataset["root"], "--quiet").exit_code == 2
    assert snapshot(dataset["root"]) == before

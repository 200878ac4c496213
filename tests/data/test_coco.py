import json
import os
from pathlib import Path

import numpy as np
import pytest

import edgefpn.data.coco as coco_mod
from edgefpn.data.coco import load_split
from edgefpn.errors import DataError


def _write(root: Path, data: object, split: str = "train") -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann = root / "annotations" / f"instances_{split}.json"
    ann.write_text(data if isinstance(data, str) else json.dumps(data))
    return ann


def _coco(**overrides: object) -> dict:
    data = {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 11, "file_name": "sub/b.jpg", "width": 50, "height": 50},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 5, 5]},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    data.update(overrides)
    return data


def test_load_valid(tmp_path):
    _write(tmp_path, _coco())
    split = load_split(tmp_path, "train")
    assert split.category_ids == (3, 7)  # sorted by id
    assert split.class_names == ("three", "seven")
    assert split.num_classes == 2
    assert split.skipped == ()
    a, b = split.images
    assert a.id == 10 and a.path == tmp_path / "images" / "a.jpg" and (a.width, a.height) == (100, 80)
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    np.testing.assert_array_equal(a.boxes, [[10, 20, 40, 60], [0, 0, 5, 5]])
    np.testing.assert_array_equal(a.labels, [1, 0])
    assert b.boxes.shape == (0, 4) and b.labels.shape == (0,)
    assert b.path == tmp_path / "images" / "sub" / "b.jpg"


def test_missing_annotations_file_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"annotations/instances_val\.json: annotations file not found"):
        load_split(tmp_path, "val")


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere: dataset folder not found"):
        load_split(tmp_path / "nowhere", "train")


def test_missing_images_folder(tmp_path):
    _write(tmp_path, _coco())
    (tmp_path / "images").rmdir()
    with pytest.raises(DataError, match="images folder not found"):
        load_split(tmp_path, "train")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("{not json", "malformed JSON"),
        ("[]", "top level must be an object"),
        ({"images": [], "annotations": []}, "missing key 'categories'"),
        (_coco(images={}), "'images' must be a list"),
        (_coco(images=[{"id": 1, "file_name": "a.jpg", "width": 10}]), "missing key 'height'"),
        (
            _coco(images=[{"id": "1", "file_name": "a.jpg", "width": 10, "height": 10}]),
            "id must be an integer",
        ),
        (
            _coco(images=[{"id": 1, "file_name": "a.jpg", "width": 0, "height": 10}]),
            "width must be a positive",
        ),
        (_coco(categories=[{"id": 1}]), "name must be a string"),
        (_coco(categories=[]), "no categories"),
        (_coco(annotations=[{"id": 1, "image_id": 10, "category_id": 7}]), "missing key 'bbox'"),
        (
            _coco(annotations=[{"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 2, 3]}]),
            "list of 4 numbers",
        ),
        (
            _coco(annotations=[{"id": 1, "image_id": 10, "category_id": 7, "bbox": ["1", 2, 3, 4]}]),
            "list of 4",
        ),
    ],
)
def test_malformed_annotation_files(tmp_path, data, match):
    ann = _write(tmp_path, data)
    with pytest.raises(DataError, match=match) as info:
        load_split(tmp_path, "train")
    assert str(info.value).startswith(f"{ann}: ")


@pytest.mark.parametrize(
    "file_name", ["../secret.jpg", "sub/../../secret.jpg", "/etc/passwd", "C:/x.jpg", ""]
)
def test_file_name_outside_images_rejected(tmp_path, file_name):
    _write(tmp_path, _coco(images=[{"id": 1, "file_name": file_name, "width": 10, "height": 10}]))
    with pytest.raises(DataError, match="is not a relative path inside"):
        load_split(tmp_path, "train")


def test_symlink_escaping_images_rejected(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"")
    root = tmp_path / "ds"
    _write(root, _coco(images=[{"id": 1, "file_name": "link/x.jpg", "width": 10, "height": 10}]))
    os.symlink(outside, root / "images" / "link")
    with pytest.raises(DataError, match="link/x.jpg"):
        load_split(root, "train")


def test_bad_annotations_skipped_and_reported(tmp_path):
    anns = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [float("nan"), 0, 5, 5]},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [0, 0, 0, 5]},
        {"id": 3, "image_id": 10, "category_id": 99, "bbox": [0, 0, 5, 5]},
        {"id": 4, "image_id": 10, "category_id": 7, "bbox": [0, 0, 5, 5], "iscrowd": 1},
        {"id": 5, "image_id": 10, "category_id": 7, "bbox": [1, 1, 5, 5]},
        {"id": 6, "image_id": 10, "category_id": 7, "bbox": [0, 0, float("inf"), 5]},
        {"id": 7, "image_id": 404, "category_id": 7, "bbox": [0, 0, 5, 5]},
    ]
    _write(tmp_path, _coco(annotations=anns))  # json.dumps writes NaN / Infinity, as Python tools do
    split = load_split(tmp_path, "train")
    np.testing.assert_array_equal(split.images[0].boxes, [[1, 1, 6, 6]])
    reasons = "\n".join(split.skipped)
    assert len(split.skipped) == 6
    assert "annotation 1 (image 10): non-finite bbox" in reasons
    assert "annotation 2 (image 10): bbox with non-positive" in reasons
    assert "annotation 3 (image 10): unknown category_id 99" in reasons
    assert "annotation 4 (image 10): iscrowd=1" in reasons
    assert "annotation 6 (image 10): non-finite bbox" in reasons
    assert "annotation 7 (image 404): unknown image_id" in reasons


def test_boxes_clipped_to_image(tmp_path):
    anns = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [90, 70, 20, 20]},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [200, 0, 5, 5]},
    ]
    _write(tmp_path, _coco(annotations=anns))
    split = load_split(tmp_path, "train")
    np.testing.assert_array_equal(split.images[0].boxes, [[90, 70, 100, 80]])
    assert any("outside the image" in s for s in split.skipped)


def test_too_many_annotations_on_one_image(tmp_path, monkeypatch):
    monkeypatch.setattr(coco_mod, "MAX_ANNOTATIONS_PER_IMAGE", 3)
    anns = [{"id": i, "image_id": 10, "category_id": 7, "bbox": [0, 0, 5, 5]} for i in range(4)]
    _write(tmp_path, _coco(annotations=anns))
    with pytest.raises(DataError, match="image 10 has more than 3 annotations"):
        load_split(tmp_path, "train")


def test_bad_split_name(tmp_path):
    with pytest.raises(ValueError, match=r"'\.\./x'"):
        load_split(tmp_path, "../x")


def test_images_not_opened_and_large_split_is_fast(tmp_path):
    import time

    n = 5000
    images = [{"id": i, "file_name": f"{i:06d}.jpg", "width": 640, "height": 480} for i in range(n)]
    anns = [
        {"id": k, "image_id": k % n, "category_id": 7, "bbox": [k % 50, 1, 20, 30], "area": 600, "iscrowd": 0}
        for k in range(4 * n)
    ]
    _write(tmp_path, _coco(images=images, annotations=anns))  # no image files exist at all
    t = time.perf_counter()
    split = load_split(tmp_path, "train")
    assert time.perf_counter() - t < 5.0
    assert len(split.images) == n and sum(len(r.boxes) for r in split.images) == 4 * n

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from edgefpn.errors import DataError
from edgefpn.metrics.coco import coco_map, detections_to_coco
from edgefpn.postprocess import Detections

# [x, y, w, h] in two images and two classes: one small (< 32^2), two medium, one large (> 96^2) box.
GT_BOXES = {
    1: [(7, [10.0, 10.0, 20.0, 20.0]), (9, [100.0, 50.0, 60.0, 40.0])],
    2: [(9, [0.0, 0.0, 150.0, 120.0]), (7, [200.0, 150.0, 50.0, 50.0])],
}


@pytest.fixture
def gt_file(tmp_path: Path) -> Path:
    anns = [
        {"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
        for i, (img, cat, box) in enumerate(
            (img, cat, box) for img, objs in GT_BOXES.items() for cat, box in objs
        )
    ]
    data = {
        "images": [
            {"id": 1, "width": 320, "height": 240, "file_name": "a.jpg"},
            {"id": 2, "width": 320, "height": 240, "file_name": "b.jpg"},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": anns,
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path


def _perfect() -> list[dict]:
    return [
        {"image_id": img, "category_id": cat, "bbox": list(box), "score": 0.9}
        for img, objs in GT_BOXES.items()
        for cat, box in objs
    ]


KEYS = ("map", "map50", "map75", "map_small", "map_medium", "map_large")


def test_perfect_predictions(gt_file, capsys):
    results = _perfect()
    before = copy.deepcopy(results)
    m = coco_map(gt_file, results)
    assert {k: m[k] for k in KEYS} == {k: pytest.approx(100.0) for k in KEYS}
    assert m["per_class"] == {"cat": pytest.approx(100.0), "dog": pytest.approx(100.0)}
    assert results == before  # pycocotools' loadRes must not mutate the caller's dicts
    assert capsys.readouterr().out == ""  # COCOeval's printing is silenced


def test_shifted_box_lowers_map(gt_file):
    results = _perfect()
    results[1]["bbox"] = [130.0, 50.0, 60.0, 40.0]  # the dog in image 1 moves by half its width: IoU 1/3
    m = coco_map(gt_file, results)
    assert 0.0 < m["map"] < 100.0
    assert m["map_medium"] == pytest.approx(50.0)  # medium: the cat is still found, the dog is missed
    assert m["per_class"]["cat"] == pytest.approx(100.0) and m["per_class"]["dog"] < 100.0


def test_empty_results(gt_file):
    m = coco_map(gt_file, [])
    assert {k: m[k] for k in KEYS} == {k: 0.0 for k in KEYS}
    assert m["per_class"] == {"cat": 0.0, "dog": 0.0}


def test_image_subset_and_undefined_areas(gt_file):
    m = coco_map(gt_file, _perfect(), image_ids=[1])  # image 1 has no large object
    assert m["map"] == pytest.approx(100.0)
    assert m["map_large"] == -1.0
    with pytest.raises(ValueError, match=r"\[3\]"):
        coco_map(gt_file, _perfect(), image_ids=[1, 3])


def test_errors(gt_file, tmp_path):
    with pytest.raises(DataError, match="not found"):
        coco_map(tmp_path / "missing.json", [])
    with pytest.raises(ValueError, match=r"\[5\]"):
        coco_map(gt_file, [{"image_id": 5, "category_id": 7, "bbox": [0, 0, 1, 1], "score": 0.5}])
    with pytest.raises(ValueError, match="bbox"):
        coco_map(gt_file, [{"image_id": 1, "category_id": 7, "score": 0.5}])


def test_detections_to_coco(gt_file):
    dets = Detections(
        boxes=np.array([[10.0, 10.0, 30.0, 30.0], [100.0, 50.0, 160.0, 90.0]], np.float32),
        scores=np.array([0.8, 0.7], np.float32),
        labels=np.array([0, 1], np.int64),
    )
    results = detections_to_coco(dets, 1, category_ids=[7, 9])
    assert results == [
        {"image_id": 1, "category_id": 7, "bbox": [10.0, 10.0, 20.0, 20.0], "score": pytest.approx(0.8)},
        {"image_id": 1, "category_id": 9, "bbox": [100.0, 50.0, 60.0, 40.0], "score": pytest.approx(0.7)},
    ]
    assert coco_map(gt_file, results, image_ids=[1])["map"] == pytest.approx(100.0)
    assert detections_to_coco(Detections.empty(), 1, [7]) == []
    with pytest.raises(ValueError, match="0..1"):
        detections_to_coco(dets, 1, category_ids=[7])

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edgefpn.data import synth, synth_render
from edgefpn.data.coco import load_split
from edgefpn.data.preprocess import load_image
from edgefpn.errors import DataError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "shapes"
    synth.generate(out, num_train=40, num_val=12, num_calib=8, seed=3, show_progress=False)
    return out


def test_layout_and_summary(tmp_path):
    out = tmp_path / "ds"
    summary = synth.generate(out, num_train=4, num_val=2, num_calib=3, show_progress=False)
    assert summary["class_names"] == list(synth.CLASS_NAMES)
    assert {k: v["images"] for k, v in summary["splits"].items()} == {"train": 4, "val": 2, "calib": 3}
    for split in ("train", "val", "calib"):
        coco = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        assert len(coco["images"]) == summary["splits"][split]["images"]
        assert len(coco["annotations"]) == summary["splits"][split]["annotations"]
        assert [c["id"] for c in coco["categories"]] == list(range(1, len(synth.CLASS_NAMES) + 1))
        for img in coco["images"]:
            assert (out / "images" / img["file_name"]).is_file()
            assert img["file_name"].startswith(f"{split}_")
    assert (out / "images" / "calib_000002.jpg").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"], "temp dirs left behind"


def test_deterministic_byte_identical(tmp_path):
    kwargs = {"num_train": 6, "num_val": 3, "num_calib": 3, "seed": 7, "show_progress": False}
    synth.generate(tmp_path / "a", **kwargs)
    synth.generate(tmp_path / "b", **kwargs)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 12 + 3 + 1
    assert a == b
    synth.generate(tmp_path / "c", **{**kwargs, "seed": 8})
    c = _files(tmp_path / "c")
    assert a["images/train_000000.jpg"] != c["images/train_000000.jpg"]


def test_splits_disjoint(dataset):
    digests: dict[str, set[str]] = {}
    for split in ("train", "val", "calib"):
        paths = sorted((dataset / "images").glob(f"{split}_*.jpg"))
        digests[split] = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
        assert len(digests[split]) == len(paths)  # no duplicates within a split either
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["calib"]
    assert not digests["val"] & digests["calib"]
    # Same index in different splits must not share content (they used to share a seed stream).
    assert not np.array_equal(
        load_image(dataset / "images" / "val_000000.jpg")[:50, :50],
        load_image(dataset / "images" / "calib_000000.jpg")[:50, :50],
    )


def test_at_least_six_classes_all_used(dataset):
    split = load_split(dataset, "train")
    assert len(split.class_names) >= 6
    used = np.unique(np.concatenate([r.labels for r in split.images]))
    assert len(used) == len(split.class_names)


def test_boxes_valid_and_sizes_span_fpn_levels(dataset):
    split = load_split(dataset, "train")
    assert split.skipped == ()
    sides, rel = [], []
    image_sizes = set()
    for rec in split.images:
        assert 224 <= rec.width <= 384 and 224 <= rec.height <= 384
        image_sizes.add((rec.width, rec.height))
        assert 1 <= len(rec.boxes) <= synth_render.MAX_OBJECTS
        b = rec.boxes
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 1] >= 0)
        assert np.all(b[:, 2] <= rec.width) and np.all(b[:, 3] <= rec.height)
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        s = np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
        sides.extend(s.tolist())
        rel.extend((s / min(rec.width, rec.height)).tolist())
    assert len(image_sizes) > 10
    assert any(w != h for w, h in image_sizes)
    assert min(sides) < 16
    assert max(rel) > 0.4
    # Log-uniform: a healthy share of both small (P3) and large (P5+) objects.
    sides_arr = np.asarray(sides)
    assert np.mean(sides_arr < 24) > 0.15
    assert np.mean(sides_arr > 64) > 0.15


def test_objects_contrast_with_their_surroundings(dataset):
    # A learnability proxy: inside each box, pixels differ clearly from the box's border ring.
    split = load_split(dataset, "val")
    diffs = []
    for rec in split.images:
        img = load_image(rec.path).astype(np.float32)
        for x0, y0, x1, y1 in rec.boxes.astype(int):
            if x1 - x0 < 12 or y1 - y0 < 12:
                continue
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            centre = img[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(0)
            ring = np.concatenate([img[max(y0 - 2, 0), x0:x1], img[min(y1 + 1, rec.height - 1), x0:x1]])
            diffs.append(np.linalg.norm(centre - ring.mean(0)))
    assert len(diffs) > 10
    assert np.median(diffs) > 40


def test_box_is_tight_to_drawn_shape(monkeypatch):
    # Paint every object pure white on black, so a pixel's value is its coverage * 255.
    monkeypatch.setattr(synth_render, "_texture", lambda *args: np.full(3, 255.0, dtype=np.float32))
    rng = np.random.default_rng(0)
    canvas = np.zeros((100, 100, 3), dtype=np.float32)
    owner = np.full((100, 100), -1, dtype=np.int16)
    for label in range(len(synth.CLASS_NAMES)):
        canvas[:] = 0
        obj = synth_render._place_object(rng, canvas, owner, 0, label, 40.0, [])
        assert obj is not None
        _, (x0, y0, x1, y1), mask, area = obj
        drawn = np.argwhere(canvas[:, :, 0] >= 127.5)  # pixels at least half covered
        assert np.all(canvas[:, : max(x0 - 1, 0)] == 0) and np.all(canvas[: max(y0 - 1, 0)] == 0)
        assert np.all(canvas[:, x1 + 1 :] == 0) and np.all(canvas[y1 + 1 :] == 0)
        assert (x0, y0) == (drawn[:, 1].min(), drawn[:, 0].min())
        assert (x1, y1) == (drawn[:, 1].max() + 1, drawn[:, 0].max() + 1)
        assert mask.shape == (y1 - y0, x1 - x0) and mask.sum() == area
        assert 20 <= x1 - x0 <= 41 and 20 <= y1 - y0 <= 41


def test_occluded_objects_are_dropped(monkeypatch):
    # With the visibility threshold at 100%, any partly hidden object loses its annotation.
    def count(min_visible: float) -> int:
        monkeypatch.setattr(synth_render, "MIN_VISIBLE", min_visible)
        total = 0
        for i in range(30):
            rng = np.random.default_rng([1, 0, i])
            total += len(synth_render.render(rng, 256, 256)[1])
        return total

    assert count(1.0) < count(0.4)


def test_refuses_to_clobber_foreign_folder(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synthetic dataset"):
        synth.generate(out, num_train=1, num_val=1, num_calib=1, show_progress=False)
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_replaces_previous_output(tmp_path):
    out = tmp_path / "data"
    synth.generate(out, num_train=3, num_val=1, num_calib=1, show_progress=False)
    synth.generate(out, num_train=2, num_val=1, num_calib=1, show_progress=False)
    assert len(list((out / "images").glob("train_*.jpg"))) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_train": -1}, "-1"), ({"min_side": 400}, "min_side=400"), ({"seed": 1.5}, "1.5")],
)
def test_rejects_bad_arguments(tmp_path, kwargs, match):
    args = {"num_train": 1, "num_val": 1, "num_calib": 1, "show_progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        synth.generate(tmp_path / "x", **args)

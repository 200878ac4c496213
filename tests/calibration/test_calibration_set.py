"""CalibrationSet: deterministic choice, streaming batches, no val overlap, readers, cache key."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgefpn.calibration import CalibrationSet, OrtCalibrationReader, cache_key, nncf_dataset
from edgefpn.config import load_config
from edgefpn.data.preprocess import load_image, preprocess
from edgefpn.errors import DataError


def _image(path: Path, seed: int, size=(40, 56)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)
    return path


def _dataset(root: Path, splits: dict[str, list[str]]) -> Path:
    """A minimal COCO root: every named file is a distinct random PNG."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    names = sorted({n for files in splits.values() for n in files})
    for i, name in enumerate(names):
        _image(root / "images" / name, i)
    for split, files in splits.items():
        data = {
            "images": [{"id": i + 1, "file_name": f, "width": 56, "height": 40} for i, f in enumerate(files)],
            "annotations": [],
            "categories": [{"id": 1, "name": "thing"}],
        }
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _cfg(root: Path, *extra: str):
    return load_config(None, [f"data.root={root}", "data.builtin=false", "model.input_size=[64, 64]", *extra])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _dataset(tmp_path / "ds", {"val": ["v0.png", "v1.png"], "calib": [f"c{i}.png" for i in range(5)]})


def test_split_set_streams_the_shared_preprocessing(root: Path) -> None:
    calib = CalibrationSet(_cfg(root, "quantize.num_images=5"))
    assert [p.name for p in calib.paths] == [f"c{i}.png" for i in range(5)]
    batches = list(calib.iter_batches(2))
    assert [b.shape for b in batches] == [(2, 3, 64, 64), (2, 3, 64, 64), (1, 3, 64, 64)]
    want, _ = preprocess(load_image(calib.paths[3]), size=(64, 64))
    np.testing.assert_array_equal(batches[1][1], want)
    # a static batch-2 model gets full batches, the last one filled from the start of the set
    model_inputs = list(calib.iter_model_inputs(2, batch_size=3))
    assert len(model_inputs) == 3 and all(x.shape == (2, 3, 64, 64) for x in model_inputs)
    np.testing.assert_array_equal(model_inputs[-1][1], batches[0][0])


def test_folder_choice_is_sorted_seeded_and_deterministic(tmp_path: Path, root: Path) -> None:
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    for i in range(12):
        _image((folder / "sub" if i % 3 == 0 else folder) / f"img{i:02d}.jpg", 100 + i)
    (folder / "notes.txt").write_text("not an image")
    cfg = _cfg(root, f"quantize.calib_folder={folder}", "quantize.num_images=5")
    a, b = CalibrationSet(cfg), CalibrationSet(cfg)
    assert a.paths == b.paths and len(a) == 5 and a.available == 12
    assert a.skipped == ("notes.txt",)  # named, for quantize to say what it skipped
    assert all(p.suffix == ".jpg" for p in a.paths)
    other_seed = CalibrationSet(
        _cfg(root, f"quantize.calib_folder={folder}", "quantize.num_images=5", "run.seed=1")
    )
    assert other_seed.paths != a.paths


def test_empty_folder_is_one_clear_line(tmp_path: Path, root: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    with pytest.raises(DataError, match="no images") as err:
        CalibrationSet(_cfg(root, f"quantize.calib_folder={empty}"))
    assert str(empty) in str(err.value) and "\n" not in str(err.value)


def test_calib_split_overlapping_val_is_refused_by_path(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", {"val": ["v0.png", "shared.png"], "calib": ["c0.png", "shared.png"]})
    with pytest.raises(DataError, match="in the val split") as err:
        CalibrationSet(_cfg(root))
    assert "shared.png" in str(err.value) and "\n" not in str(err.value)


def test_copy_of_a_val_image_is_refused_by_content(tmp_path: Path, root: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    _image(folder / "fine.png", 999)
    shutil.copy(root / "images" / "v1.png", folder / "renamed.png")
    with pytest.raises(DataError, match="same content as val image") as err:
        CalibrationSet(_cfg(root, f"quantize.calib_folder={folder}"))
    assert "renamed.png" in str(err.value) and "v1.png" in str(err.value)
    # and a symlink to a val image by resolved path
    os.remove(folder / "renamed.png")
    (folder / "link.png").symlink_to(root / "images" / "v0.png")
    with pytest.raises(DataError, match="link.png: calibration image is in the val split"):
        CalibrationSet(_cfg(root, f"quantize.calib_folder={folder}"))


def test_readers_stream_the_same_batches(root: Path) -> None:
    calib = CalibrationSet(_cfg(root))
    reader = OrtCalibrationReader(calib, model_batch=1, batch_size=2)
    first = [reader.get_next() for _ in range(len(calib))]
    assert reader.get_next() is None
    reader.rewind()
    again = list(reader)
    assert len(again) == len(first) == len(reader) == 5
    np.testing.assert_array_equal(first[4]["images"], again[4]["images"])
    ds = nncf_dataset(calib, model_batch=1, batch_size=2)
    walked = [list(ds.get_inference_data()) for _ in range(2)]  # NNCF may walk the data twice
    assert len(walked[0]) == len(walked[1]) == 5
    np.testing.assert_array_equal(walked[1][2], first[2]["images"])


def test_cache_key_covers_model_images_preprocessing_and_settings(root: Path) -> None:
    cfg = _cfg(root)
    calib = CalibrationSet(cfg)
    key = cache_key("a" * 64, calib, cfg)
    assert key == cache_key("a" * 64, CalibrationSet(cfg), cfg)
    assert key != cache_key("b" * 64, calib, cfg)
    for extra in (
        "quantize.method=entropy",
        "quantize.percentile=99.9",
        "quantize.num_images=4",
        "quantize.exclude_nodes=[/conv]",
        "model.mean=[0.5, 0.5, 0.5]",
        "model.input_size=[96, 96]",
    ):
        other = _cfg(root, extra)
        assert cache_key("a" * 64, CalibrationSet(other), other) != key, extra
    _image(root / "images" / "c2.png", 12345)  # same name, new content
    assert cache_key("a" * 64, CalibrationSet(cfg), cfg) != key

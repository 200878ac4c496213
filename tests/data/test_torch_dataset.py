import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgefpn.data import synth
from edgefpn.data.coco import load_split
from edgefpn.data.preprocess import IMAGENET_STD
from edgefpn.data.torch_dataset import DetectionDataset, collate
from edgefpn.errors import DataError


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("tds") / "shapes"
    synth.generate(out, num_train=6, num_val=2, num_calib=1, seed=1, show_progress=False)
    return load_split(out, "train")


@pytest.mark.parametrize("hflip", [False, True])
def test_items_within_input(split, hflip):
    torch.manual_seed(0)
    ds = DetectionDataset(split, (320, 256), hflip=hflip)
    assert len(ds) == 6
    for i in range(len(ds)):
        x, target = ds[i]
        assert x.shape == (3, 320, 256) and x.dtype == torch.float32
        b = target["boxes"]
        assert b.dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert b.shape == (len(target["labels"]), 4) and len(b) > 0
        assert torch.all(b[:, 0::2] >= 0) and torch.all(b[:, 0::2] <= 256)
        assert torch.all(b[:, 1::2] >= 0) and torch.all(b[:, 1::2] <= 320)
        assert torch.all(b[:, 2:] - b[:, :2] >= 1)


def test_hflip_mirrors_image_and_boxes(split):
    ds = DetectionDataset(split, (320, 320), hflip=True, seed=3)
    rec = split.images[0]
    # the per-item generator decides: find an epoch where item 0 stays and one where it flips
    flips = {e: ds.item_rng(0, e).random() < 0.5 for e in range(32)}
    x0, t0 = ds[(next(e for e, f in flips.items() if not f), 0)]
    x1, t1 = ds[(next(e for e, f in flips.items() if f), 0)]
    scale = min(320 / rec.width, 320 / rec.height)
    content_w = round(rec.width * scale)
    # resize-then-flip == flip-then-resize up to OpenCV's fixed-point rounding: one uint8 level, rarely
    a, b = x1[:, :, :content_w].numpy(), x0[:, :, :content_w].flip(-1).numpy()
    one_level = 1.0 / (255 * min(IMAGENET_STD)) + 1e-5
    np.testing.assert_allclose(a, b, atol=one_level)
    assert np.mean(np.abs(a - b) > 1e-5) < 0.05
    expected = t0["boxes"].clone()
    expected[:, 0] = rec.width * scale - t0["boxes"][:, 2]
    expected[:, 2] = rec.width * scale - t0["boxes"][:, 0]
    np.testing.assert_allclose(t1["boxes"].numpy(), expected.numpy(), atol=1e-3)
    assert torch.equal(t0["labels"], t1["labels"])


def test_collate(split):
    ds = DetectionDataset(split, (128, 128))
    images, targets = collate([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, 128, 128)
    assert len(targets) == 3 and all(set(t) == {"boxes", "labels"} for t in targets)


def _tiny_dataset(root: Path, size: tuple[int, int], bboxes: list[list[float]]) -> None:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", size, (40, 90, 200)).save(root / "images" / "a.png")
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(bboxes)]
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 1000, "height": 500}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))


def test_degenerate_boxes_dropped(tmp_path):
    # 1000 px wide -> 100 px: a 5 px wide box becomes 0.5 px and must go; a 50 px one stays.
    _tiny_dataset(tmp_path, (1000, 500), [[10, 10, 5, 100], [100, 100, 50, 50]])
    _, target = DetectionDataset(load_split(tmp_path, "train"), (100, 100))[0]
    np.testing.assert_allclose(target["boxes"].numpy(), [[10, 10, 15, 15]], atol=1e-5)
    assert target["labels"].tolist() == [0]


def test_size_mismatch_with_annotations(tmp_path):
    _tiny_dataset(tmp_path, (999, 500), [[10, 10, 50, 50]])
    with pytest.raises(DataError, match="image is 999x500 but the annotations say 1000x500"):
        DetectionDataset(load_split(tmp_path, "train"), (100, 100))[0]


def test_bad_size():
    with pytest.raises(ValueError, match=r"\(0, 3\)"):
        DetectionDataset(None, (0, 3))  # type: ignore[arg-type]

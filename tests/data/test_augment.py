"""Training augmentation: boxes follow the pixels, off is identity, a fixed rng is deterministic, and the
val / calibration / deploy preprocessing does not change when training augments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgefpn.config import AugmentConfig, CropConfig, PhotometricConfig, load_config
from edgefpn.data import synth
from edgefpn.data.augment import augment, clip_boxes, photometric, random_crop, scale_jitter
from edgefpn.data.coco import load_split
from edgefpn.data.preprocess import load_image, preprocess
from edgefpn.data.torch_dataset import DetectionDataset
from edgefpn.errors import ConfigError

ALL_ON = AugmentConfig(
    scale_jitter=(0.5, 1.6),
    crop=CropConfig(prob=1.0, min_scale=0.4, min_visible=0.0),
    photometric=PhotometricConfig(prob=1.0),
)


def _blob_image(rng: np.random.Generator, h: int = 150, w: int = 220) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with three bright rectangles; their xyxy boxes."""
    img = np.full((h, w, 3), 40, np.uint8)
    boxes = []
    for _ in range(3):
        bw, bh = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        img[y0 : y0 + bh, x0 : x0 + bw] = 230
        boxes.append([x0, y0, x0 + bw, y0 + bh])
    return img, np.array(boxes, np.float32)


def _frame_of(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The tight box of the bright pixels inside ``box`` (grown by 2 px) of ``img``."""
    x0, y0 = max(int(box[0]) - 2, 0), max(int(box[1]) - 2, 0)
    patch = img[y0 : int(np.ceil(box[3])) + 2, x0 : int(np.ceil(box[2])) + 2, 0] > 135
    ys, xs = np.nonzero(patch)
    return np.array([xs.min() + x0, ys.min() + y0, xs.max() + 1 + x0, ys.max() + 1 + y0], np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_boxes_frame_their_blobs_after_crop_and_scale(seed):
    rng = np.random.default_rng(seed)
    img, boxes = _blob_image(rng)
    # rectangles may overlap: keep the test to boxes that touch no other one
    cfg = AugmentConfig(scale_jitter=(0.5, 1.6), crop=CropConfig(prob=1.0, min_scale=0.5, min_visible=0.0))
    labels = np.arange(len(boxes))
    out, out_boxes, out_labels = augment(img, boxes, labels, rng=np.random.default_rng(100 + seed), cfg=cfg)
    assert out.dtype == np.uint8 and out.ndim == 3
    assert out_boxes.shape == (len(out_labels), 4)
    h, w = out.shape[:2]
    assert np.all(out_boxes[:, 0::2] >= 0) and np.all(out_boxes[:, 0::2] <= w)
    assert np.all(out_boxes[:, 1::2] >= 0) and np.all(out_boxes[:, 1::2] <= h)
    for box, label in zip(out_boxes, out_labels, strict=True):
        others = np.delete(boxes, label, axis=0)
        b = boxes[label]
        overlaps = (np.minimum(others[:, 2], b[2]) > np.maximum(others[:, 0], b[0])) & (
            np.minimum(others[:, 3], b[3]) > np.maximum(others[:, 1], b[1])
        )
        if overlaps.any():
            continue
        # scale jitter resizes nothing here (the letterbox does later): integer shifts, exact frames
        np.testing.assert_allclose(_frame_of(out, box), box, atol=1.0)


def test_crop_drops_boxes_outside_and_cut_ones_by_visibility():
    img = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[0, 0, 10, 10], [80, 80, 100, 100], [40, 40, 60, 60]], np.float32)
    labels = np.array([0, 1, 2])
    for seed in range(20):
        out, ob, ol = random_crop(
            img,
            boxes,
            labels,
            rng=np.random.default_rng(seed),
            cfg=CropConfig(prob=1.0, min_scale=0.3, max_scale=0.7, min_visible=0.5),
        )
        h, w = out.shape[:2]
        assert 30 <= h <= 70 and 30 <= w <= 70
        areas = (ob[:, 2] - ob[:, 0]) * (ob[:, 3] - ob[:, 1])
        assert np.all(areas >= 0.5 * 100 - 1e-3) or len(ob) == 0  # every box is 10x10 or larger
        assert np.all(ob[:, 0::2] <= w) and np.all(ob[:, 1::2] <= h)
        assert set(ol) <= {0, 1, 2}


def test_scale_jitter_changes_the_letterbox_scale():
    img = np.full((100, 200, 3), 200, np.uint8)
    fill = np.array([124, 116, 104], np.uint8)
    out, _, _ = scale_jitter(
        img,
        np.zeros((0, 4), np.float32),
        np.zeros(0),
        rng=np.random.default_rng(0),
        scale_range=(0.5, 0.5),
        fill=fill,
    )
    assert out.shape == (200, 400, 3)  # a canvas twice the size: the letterbox halves the object
    assert (out == 200).all(axis=2).sum() == 100 * 200  # the whole image, once
    assert (out == fill).all(axis=2).sum() == 400 * 200 - 100 * 200
    out, _, _ = scale_jitter(
        img,
        np.zeros((0, 4), np.float32),
        np.zeros(0),
        rng=np.random.default_rng(0),
        scale_range=(2.0, 2.0),
        fill=fill,
    )
    assert out.shape == (50, 100, 3) and (out == 200).all()


def test_photometric_keeps_dtype_and_range_and_changes_colours():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    cfg = PhotometricConfig(prob=1.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    out = photometric(img, rng=np.random.default_rng(1), cfg=cfg)
    assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img)
    out_f = photometric(img.astype(np.float32), rng=np.random.default_rng(1), cfg=cfg)
    assert out_f.dtype == np.float32 and out_f.min() >= 0 and out_f.max() <= 255
    np.testing.assert_allclose(out_f, out, atol=1.0)  # uint8 is the rounded float result
    same = photometric(img, rng=np.random.default_rng(1), cfg=PhotometricConfig(prob=0.0))
    assert same is img


def test_all_off_is_identity():
    rng = np.random.default_rng(0)
    img, boxes = _blob_image(rng)
    labels = np.arange(3)
    out = augment(img, boxes, labels, rng=np.random.default_rng(0), cfg=AugmentConfig())
    assert out[0] is img and out[1] is boxes and out[2] is labels
    off = AugmentConfig(crop=CropConfig(prob=0.0), photometric=PhotometricConfig(prob=0.0))
    out = augment(img, boxes, labels, rng=np.random.default_rng(0), cfg=off)
    assert out[0] is img and np.array_equal(out[1], boxes)


def test_fixed_rng_is_deterministic_and_different_rngs_differ():
    img, boxes = _blob_image(np.random.default_rng(3))
    labels = np.arange(3)
    a = augment(img, boxes, labels, rng=np.random.default_rng(7), cfg=ALL_ON)
    b = augment(img, boxes, labels, rng=np.random.default_rng(7), cfg=ALL_ON)
    c = augment(img, boxes, labels, rng=np.random.default_rng(8), cfg=ALL_ON)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_clip_boxes_is_the_dataset_rule():
    boxes = np.array([[-5, -5, 10, 10], [50, 50, 50.5, 80], [90, 90, 120, 130]], np.float32)
    out, labels = clip_boxes(boxes, np.array([1, 2, 3]), width=100, height=100)
    np.testing.assert_array_equal(out, [[0, 0, 10, 10], [90, 90, 100, 100]])
    np.testing.assert_array_equal(labels, [1, 3])
    # min_visible: the first box keeps 100/225 of its area, the third 100/1200
    out, labels = clip_boxes(boxes, np.array([1, 2, 3]), width=100, height=100, min_visible=0.4)
    np.testing.assert_array_equal(labels, [1])


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("aug") / "shapes"
    synth.generate(out, num_train=4, num_val=1, num_calib=1, seed=2, show_progress=False)
    return load_split(out, "train")


def test_dataset_augments_per_item_and_epoch_deterministically(split):
    ds = DetectionDataset(split, (128, 128), augment=ALL_ON, seed=5)
    x0, t0 = ds[1]
    x0b, t0b = ds[1]
    assert torch.equal(x0, x0b) and torch.equal(t0["boxes"], t0b["boxes"])
    ds.set_epoch(1)
    x1, _ = ds[1]
    assert not torch.equal(x0, x1)
    assert torch.all(t0["boxes"][:, 2:] - t0["boxes"][:, :2] >= 1)


def test_dataset_without_augment_is_todays_preprocessing(split):
    """augment off (or absent): the item is preprocess() of the decoded file, boxes letterboxed."""
    for aug in (None, AugmentConfig()):
        ds = DetectionDataset(split, (128, 160), augment=aug)
        for i, rec in enumerate(split.images):
            x, target = ds[i]
            ref, lb = preprocess(load_image(rec.path), size=(128, 160))
            assert np.array_equal(x.numpy(), ref)
            np.testing.assert_allclose(target["boxes"].numpy(), rec.boxes * lb.scale, rtol=1e-6)


def test_augment_config_leaves_eval_and_deploy_preprocessing_alone(split):
    from edgefpn.pipeline.common import make_prepost

    plain = load_config(None, ["model.input_size=[128,128]"])
    augmented = load_config(
        None,
        [
            "model.input_size=[128,128]",
            "train.augment.scale_jitter=[0.5,2.0]",
            "train.augment.crop={}",
            "train.augment.photometric={}",
        ],
    )
    image = load_image(split.images[0].path)
    a, lb_a = make_prepost(plain).prepare(image)
    b, lb_b = make_prepost(augmented).prepare(image)
    assert np.array_equal(a, b) and lb_a == lb_b


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.augment.scale_jitter=[0, 1]", "train.augment.scale_jitter"),
        ("train.augment.crop.min_scale=1.5", "train.augment.crop"),
        ("train.augment.crop.prob=-1", "train.augment.crop.prob"),
        ("train.augment.photometric.brightness=1.0", "train.augment.photometric.brightness"),
        ("train.augment.photometric.hue=0.9", "train.augment.photometric.hue"),
        ("train.augment.crop.scale=2", "train.augment.crop.scale"),
    ],
)
def test_bad_augment_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])

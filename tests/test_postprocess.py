"""edgefpn.postprocess against torchvision's own FCOS postprocessing and NMS."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from edgefpn.postprocess import (
    LEVELS,
    Detections,
    PostprocessParams,
    batched_nms,
    box_iou,
    fcos_decode,
    nms,
)

NUM_CLASSES = 6


@pytest.fixture(scope="module")
def fcos_model() -> FCOS:
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    model = FCOS(backbone, num_classes=NUM_CLASSES).eval()
    # Spread the (otherwise near-constant) initial scores and boxes, without saturating the sigmoid
    # (saturated scores tie, and torchvision orders ties arbitrarily).
    torch.nn.init.normal_(model.head.classification_head.cls_logits.weight, std=0.02)
    torch.nn.init.normal_(model.head.regression_head.bbox_reg.weight, std=0.02)
    return model


def _run(model: FCOS, images: torch.Tensor, params: PostprocessParams):
    """torchvision's detections and the per-level tensors of the export contract, for one batch."""
    n, _, h, w = images.shape
    model.score_thresh = params.score_thresh
    model.nms_thresh = params.nms_thresh
    model.topk_candidates = params.topk_candidates
    model.detections_per_img = params.detections_per_img
    with torch.no_grad():
        features = list(model.backbone(images).values())
        head = model.head(
            features
        )  # cls_logits [N, HW, C], bbox_regression [N, HW, 4], bbox_ctrness [N, HW, 1]
        image_list = ImageList(images, [(h, w)] * n)
        anchors = model.anchor_generator(image_list, features)
        sizes = [f.shape[2] * f.shape[3] for f in features]
        split = {k: list(v.split(sizes, dim=1)) for k, v in head.items()}
        ref = model.postprocess_detections(
            split, [list(a.split(sizes)) for a in anchors], image_list.image_sizes
        )
    outputs = {}
    for i, (lvl, f) in enumerate(zip(LEVELS, features, strict=True)):
        hl, wl = f.shape[2:]
        for name, key in (("cls", "cls_logits"), ("box", "bbox_regression"), ("ctr", "bbox_ctrness")):
            flat = split[key][i]  # [N, HW, K]
            outputs[f"{name}_{lvl}"] = flat.reshape(n, hl, wl, -1).permute(0, 3, 1, 2).contiguous().numpy()
    return ref, outputs


def _assert_same(ref: dict, det: Detections) -> None:
    assert len(det) == len(ref["scores"])
    assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32 and det.labels.dtype == np.int64
    np.testing.assert_allclose(det.boxes, ref["boxes"].numpy(), atol=1e-3, rtol=0)
    np.testing.assert_allclose(det.scores, ref["scores"].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(det.labels, ref["labels"].numpy())


@pytest.mark.parametrize("size", [(320, 320), (256, 384)])
@pytest.mark.parametrize(
    "params",
    [
        PostprocessParams(score_thresh=0.05),
        PostprocessParams(score_thresh=0.0, nms_thresh=0.5),
        PostprocessParams(score_thresh=0.05, topk_candidates=10),
        PostprocessParams(score_thresh=0.1, nms_thresh=0.3, detections_per_img=7),
    ],
    ids=["default", "no-threshold", "topk-10", "max-dets-7"],
)
def test_fcos_decode_matches_torchvision(fcos_model, size, params):
    torch.manual_seed(1)
    images = torch.randn(2, 3, *size)
    ref, outputs = _run(fcos_model, images, params)
    dets = fcos_decode(outputs, params, image_size=size)
    assert len(dets) == 2
    for r, d in zip(ref, dets, strict=True):
        assert len(r["scores"]) > 5  # a real comparison, not two empty lists
        _assert_same(r, d)
    if params.detections_per_img == 7:
        assert all(len(d) == 7 for d in dets)


def test_fcos_decode_limits_bind(fcos_model):
    """The top-k and detections_per_img cases above really change the result."""
    torch.manual_seed(1)
    images = torch.randn(1, 3, 320, 320)
    _, outputs = _run(fcos_model, images, PostprocessParams())
    full = fcos_decode(
        outputs, PostprocessParams(score_thresh=0.05, detections_per_img=1000), image_size=(320, 320)
    )
    topk = fcos_decode(
        outputs, PostprocessParams(score_thresh=0.05, topk_candidates=10), image_size=(320, 320)
    )
    assert len(full[0]) > 100  # detections_per_img=100 truncates
    assert len(topk[0]) <= 5 * 10 < len(full[0])


def test_fcos_decode_known_box():
    """One confident location decodes to the box implied by torchvision's anchor convention."""
    size = (64, 64)
    outputs = {}
    for lvl, grid in zip(LEVELS, (8, 4, 2, 1, 1), strict=True):
        outputs[f"cls_{lvl}"] = np.full((1, 3, grid, grid), -20.0, np.float32)
        outputs[f"box_{lvl}"] = np.ones((1, 4, grid, grid), np.float32)
        outputs[f"ctr_{lvl}"] = np.zeros((1, 1, grid, grid), np.float32)
    outputs["cls_p3"][0, 1, 2, 3] = 5.0  # class 1 at row 2, column 3 of P3 (stride 8)
    outputs["box_p3"][0, :, 2, 3] = [1.0, 1.0, 2.0, 2.0]  # ltrb / 8
    (det,) = fcos_decode(outputs, PostprocessParams(), image_size=size)
    # anchor centre (3 * 8, 2 * 8) = (24, 16), the cell's top-left corner as in torchvision
    np.testing.assert_array_equal(det.boxes, [[16.0, 8.0, 40.0, 32.0]])
    np.testing.assert_allclose(det.scores, [np.sqrt(1 / (1 + np.exp(-5.0)) * 0.5)], rtol=1e-6)
    np.testing.assert_array_equal(det.labels, [1])


def test_fcos_decode_extreme_logits_and_clipping():
    size = (64, 64)
    outputs = {}
    for lvl, grid in zip(LEVELS, (8, 4, 2, 1, 1), strict=True):
        outputs[f"cls_{lvl}"] = np.full((1, 2, grid, grid), -1e4, np.float32)
        outputs[f"box_{lvl}"] = np.full((1, 4, grid, grid), 100.0, np.float32)
        outputs[f"ctr_{lvl}"] = np.full((1, 1, grid, grid), 1e4, np.float32)
    outputs["cls_p5"][0, 0, 1, 1] = 1e4
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # a naive sigmoid overflows exp
        (det,) = fcos_decode(outputs, PostprocessParams(score_thresh=0.0), image_size=size)
    assert det.scores[0] == 1.0 and det.labels[0] == 0
    np.testing.assert_array_equal(det.boxes[0], [0.0, 0.0, 64.0, 64.0])  # clipped to the image
    assert len(det) == 1  # sigmoid(-1e4) * 1 == 0 is not above a 0.0 threshold


def test_fcos_decode_empty_and_errors():
    size = (64, 64)
    outputs = {}
    for lvl, grid in zip(LEVELS, (8, 4, 2, 1, 1), strict=True):
        outputs[f"cls_{lvl}"] = np.full((2, 3, grid, grid), -10.0, np.float32)
        outputs[f"box_{lvl}"] = np.ones((2, 4, grid, grid), np.float32)
        outputs[f"ctr_{lvl}"] = np.zeros((2, 1, grid, grid), np.float32)
    dets = fcos_decode(outputs, PostprocessParams(), image_size=size)
    assert [len(d) for d in dets] == [0, 0]
    assert dets[0].boxes.shape == (0, 4) and dets[0].labels.dtype == np.int64

    with pytest.raises(ValueError, match="ctr_p7"):
        fcos_decode({k: v for k, v in outputs.items() if k != "ctr_p7"}, PostprocessParams(), image_size=size)
    bad = dict(outputs, box_p4=np.ones((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[2, 4, 3, 3\]"):
        fcos_decode(bad, PostprocessParams(), image_size=size)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"score_thresh": 1.0}, "1.0"),
        ({"nms_thresh": 0.0}, "0.0"),
        ({"topk_candidates": 0}, "got 0"),
        ({"detections_per_img": -1}, "got -1"),
        ({"strides": (8, 16)}, r"\(8, 16\)"),
    ],
)
def test_params_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PostprocessParams(**kwargs)


def _random_boxes(rng: np.random.Generator, k: int) -> np.ndarray:
    xy = rng.uniform(0, 200, (k, 2))
    wh = rng.uniform(1, 60, (k, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("k", [0, 1, 50, 700])
@pytest.mark.parametrize("iou_thresh", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision(k, iou_thresh):
    rng = np.random.default_rng(k)
    boxes, scores = _random_boxes(rng, k), rng.random(k).astype(np.float32)
    expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou_thresh).numpy()
    keep = nms(boxes, scores, iou_thresh)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, expected)
    if k == 700:
        assert 0 < len(keep) < k  # something was suppressed


@pytest.mark.parametrize(
    ("boxes", "iou_thresh"),
    [
        ([[0, 0, 2, 1], [0, 0, 1, 1]], 0.5),  # IoU 1 / 2 = 0.5 exactly: not above 0.5, kept
        ([[0, 0, 5, 1], [0, 0, 3, 1]], 0.6),  # IoU float32(3 / 5) = 0.6000000238 > 0.6 (a double): suppressed
    ],
)
def test_nms_threshold_boundary_matches_torchvision(boxes, iou_thresh):
    boxes = np.array(boxes, dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou_thresh).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, iou_thresh), expected)


@pytest.mark.parametrize("k", [0, 30, 900])
def test_batched_nms_matches_torchvision(k):
    rng = np.random.default_rng(k + 1)
    boxes, scores = _random_boxes(rng, k), rng.random(k).astype(np.float32)
    labels = rng.integers(0, 4, k)
    expected = torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5
    ).numpy()
    np.testing.assert_array_equal(batched_nms(boxes, scores, labels, 0.5), expected)
    if k > 100:  # class-aware keeps more than class-agnostic
        assert len(expected) > len(nms(boxes, scores, 0.5))


@pytest.mark.parametrize("max_keep", [300, 100_000])
def test_greedy_nms_applied_at_once_and_lazily_matches_torchvision(monkeypatch, max_keep):
    """Both ways NMS applies kept boxes to later ones give torchvision's result, early stop included:
    duplicates of a few objects (few kept boxes: applied to all later boxes at once) then many
    scattered boxes (many kept per block: later boxes checked block by block)."""
    # the package re-exports the function ``nms``, which shadows the submodule's attribute name
    pp = importlib.import_module("edgefpn.postprocess.nms")

    rng = np.random.default_rng(5)
    centres = rng.uniform(20, 180, (8, 2))
    dup_xy = np.repeat(centres, 150, axis=0) + rng.normal(0, 0.5, (1200, 2))
    dup = np.concatenate([dup_xy, dup_xy + 40], axis=1)
    spread = rng.uniform(0, 1000, (1500, 2))
    boxes = np.concatenate([dup, np.concatenate([spread, spread + 8], axis=1)]).astype(np.float32)
    scores = np.concatenate([rng.uniform(0.5, 1, 1200), rng.uniform(0, 0.5, 1500)]).astype(np.float32)
    labels = np.concatenate([np.repeat(np.arange(8) % 3, 150), rng.integers(0, 3, 1500)])
    expected = torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5
    ).numpy()[:max_keep]
    calls = []
    overlaps = pp._overlaps

    def spy(coords, areas, lab, rows, cols, thresh):
        calls.append("block" if rows is cols else "all-later" if cols.size > pp._NMS_BLOCK else "lazy")
        return overlaps(coords, areas, lab, rows, cols, thresh)

    monkeypatch.setattr(pp, "_overlaps", spy)
    np.testing.assert_array_equal(pp._greedy_nms(boxes, scores, labels, 0.5, max_keep), expected)
    assert {"block", "all-later", "lazy"} <= set(calls)


def test_box_iou_matches_torchvision():
    rng = np.random.default_rng(3)
    a, b = _random_boxes(rng, 7), _random_boxes(rng, 5)
    expected = torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-6, atol=1e-7)
    assert box_iou(a[:0], b).shape == (0, 5)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        box_iou(np.zeros(3), b)


def test_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import edgefpn.postprocess\n"
        "assert not any(m.startswith(('torch', 'torchvision')) and sys.modules[m] for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("k", [1, 5, 17])
def test_fcos_topk_positions_breaks_ties_by_position(k):
    # the k best of a level, ties at the cut going to the lower (location, class) position: the first
    # k of a stable sort by decreasing score, returned in position order
    from edgefpn.postprocess.common import _topk_positions

    rng = np.random.default_rng(k)
    scores = rng.integers(0, 6, 40).astype(np.float32) / 8  # many exact ties
    expected = np.sort(np.argsort(-scores, kind="stable")[:k])
    np.testing.assert_array_equal(_topk_positions(scores, k), expected)

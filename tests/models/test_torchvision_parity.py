"""Parity with torchvision: its own model's weights, loaded through `model.weights`, exported and run with
`edgefpn predict` on ONNX Runtime, give torchvision's own `model.eval()` detections.

One row per checkpoint layout (LAYOUTS). For each: torchvision's builder (``weights=None,
weights_backbone=None``) with seeded random weights made non-trivial (random BN affine + BN statistics of
the test images, variance-keeping head weights, and a classification bias shifted so each image has tens
of candidates over the layout's own score threshold: with torchvision's init every score is ~0.01 and
both sides would return nothing); its ``state_dict`` saved to a file; `edgefpn predict --config
configs/torchvision/<layout>.yaml --set model.weights=FILE` at a 256x256 input. torchvision gets our
letterboxed input un-normalised, with its transform set to that size and our mean / std, so it neither
resizes nor changes the normalisation; its boxes are mapped back with our letterbox. Same thresholds on
both sides (the config's, asserted equal to torchvision's defaults).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from edgefpn.cli import main
from edgefpn.config import load_config
from edgefpn.data.preprocess import boxes_to_original, load_image, preprocess
from edgefpn.postprocess import box_iou

ROOT = Path(__file__).resolve().parents[2]
SIZE = 256  # small, to keep three ResNet-50 detectors within a minute on 2 cores
CANDIDATES = 60  # pre-NMS candidates over the threshold in the first image (tens of detections remain)
# layout (= torchvision builder name = configs/torchvision/<layout>.yaml); the frcnn rows join here
LAYOUTS = ["fcos_resnet50_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Two smooth random pictures of different aspect ratios (lossless PNG)."""
    folder = tmp_path_factory.mktemp("parity_images")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(300, 400), (352, 256)]):
        coarse = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def _prepared(folder: Path, mean, std) -> tuple[list[np.ndarray], list]:
    out = [
        preprocess(load_image(p), size=(SIZE, SIZE), mean=mean, std=std) for p in sorted(folder.glob("*.png"))
    ]
    return [chw for chw, _ in out], [lb for _, lb in out]


def _scores(model: nn.Module, head_out: dict[str, torch.Tensor], shift: float) -> torch.Tensor:
    cls = torch.sigmoid(head_out["cls_logits"][0] + shift)  # [HWA, C]
    if "bbox_ctrness" in head_out:  # FCOS: sqrt(sigmoid(cls) * sigmoid(ctr))
        cls = torch.sqrt(cls * torch.sigmoid(head_out["bbox_ctrness"][0]))
    return cls


@torch.no_grad()
def _randomise(model: nn.Module, batch: torch.Tensor) -> None:
    """Seeded weights that give non-trivial, well-separated detections (see the module docstring)."""
    for m in model.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the statistics of exactly this batch
    model.backbone.train()
    # BN statistics of the images at half size (same content, a quarter of the compute) and of one
    # pixel-noise image: export verifies ONNX Runtime on a noise image when there is no dataset, and
    # BN statistics of smooth images alone let noise activations grow ~20x, past export.atol
    half = nn.functional.interpolate(batch, scale_factor=0.5, mode="bilinear")
    noise = (torch.rand(1, *half.shape[1:]) - 0.45) / 0.225  # [1, 3, h, w], ~normalised uniform bytes
    model.backbone(torch.cat([half, noise]))
    model.eval()
    for m in model.head.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, fan_in**-0.5)
            if m.bias is not None:  # v2's GroupNorm towers have bias-free convs
                m.bias.normal_(0.0, 0.1)
        elif isinstance(m, nn.GroupNorm):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
    head_out = model.head(list(model.backbone(batch[:1]).values()))  # the first image calibrates
    lo, hi = -30.0, 30.0  # bisect the cls bias shift for CANDIDATES scores over the threshold
    for _ in range(40):
        mid = (lo + hi) / 2
        if int((_scores(model, head_out, mid) > model.score_thresh).sum()) > CANDIDATES:
            hi = mid
        else:
            lo = mid
    model.head.classification_head.cls_logits.bias += lo


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[A, B] IoU; for boxes of zero area, the smaller of the per-axis interval IoUs.

    A box inside the letterbox padding clips to zero height or width in original pixels, where IoU is 0
    by definition; its other side still has to agree (interval IoU), and a zero side has to agree to
    0.01 px.
    """
    per_axis = []
    for lo, hi in ((0, 2), (1, 3)):
        inter = np.clip(
            np.minimum(a[:, None, hi], b[None, :, hi]) - np.maximum(a[:, None, lo], b[None, :, lo]), 0, None
        )
        union = np.maximum(a[:, None, hi], b[None, :, hi]) - np.minimum(a[:, None, lo], b[None, :, lo])
        close = np.abs(a[:, None, lo] - b[None, :, lo]) + np.abs(a[:, None, hi] - b[None, :, hi]) <= 0.01
        with np.errstate(divide="ignore", invalid="ignore"):
            per_axis.append(np.where(union > 0, inter / union, close.astype(np.float32)))
    degenerate = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) <= 0)[:, None] | (
        (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) <= 0
    )[None, :]
    return np.where(degenerate, np.minimum(*per_axis), box_iou(a, b))


@pytest.mark.shipped  # torchvision's full-size layouts: `make test-shipped` (CI runs it after make test)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_predict_matches_torchvision(layout: str, images: Path, tmp_path: Path) -> None:
    config = ROOT / "configs" / "torchvision" / f"{layout}.yaml"
    cfg = load_config(config)
    torch.manual_seed(0)
    model = getattr(torchvision.models.detection, layout)(weights=None, weights_backbone=None, num_classes=91)
    pp = cfg.postprocess
    # the shipped config carries torchvision's defaults for this model
    assert (model.score_thresh, model.nms_thresh, model.detections_per_img, model.topk_candidates) == (
        pp.score_thresh,
        pp.nms_thresh,
        pp.detections_per_img,
        pp.topk_candidates,
    )
    inputs, letterboxes = _prepared(images, cfg.model.mean, cfg.model.std)
    batch = torch.from_numpy(np.stack(inputs))  # [2, 3, SIZE, SIZE], normalised
    _randomise(model, batch)
    weights = tmp_path / f"{layout}.pth"
    torch.save(model.state_dict(), weights)

    # torchvision: un-normalised letterboxed images; its transform neither resizes (scale 1) nor changes
    # the normalisation (ours)
    model.transform = GeneralizedRCNNTransform(SIZE, SIZE, list(cfg.model.mean), list(cfg.model.std))
    mean = torch.tensor(cfg.model.mean).view(3, 1, 1)
    std = torch.tensor(cfg.model.std).view(3, 1, 1)
    with torch.no_grad():
        expected = model([x * std + mean for x in batch])

    out = tmp_path / "dets.json"
    sets = [
        f"model.weights={weights}",
        f"model.input_size=[{SIZE}, {SIZE}]",
        f"run.out={tmp_path / 'run'}",
        f"data.root={tmp_path / 'no-data'}",
        "run.threads=2",
    ]
    args = ["predict", "--config", str(config), "--images", str(images), "--save", str(out), "--quiet"]
    res = CliRunner().invoke(main, args + [a for s in sets for a in ("--set", s)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())

    # A score within float noise of the threshold may pass on one side only (ORT's convolutions are not
    # torch's): compare what clears the threshold by more than the score tolerance, 1e-3.
    clear = pp.score_thresh + 1e-3
    for name, exp, lb in zip(
        sorted(p.name for p in images.glob("*.png")), expected, letterboxes, strict=True
    ):
        exp = {k: v[exp["scores"] > clear] for k, v in exp.items()}
        mine = [d for d in got if d["file_name"] == name and d["score"] > clear]
        assert 10 <= len(exp["scores"]) == len(mine), (name, len(exp["scores"]), len(mine))
        exp_boxes = boxes_to_original(exp["boxes"].numpy(), lb)
        my_boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)], np.float32)
        my_scores = np.array([d["score"] for d in mine], np.float32)
        my_labels = np.array([d["category_id"] for d in mine])  # = torchvision's label index (91 classes)
        iou = _overlap(exp_boxes, my_boxes)  # [K, K]
        # a sliver clipped at the image edge (0.1 px wide) loses IoU to float noise: corners within
        # 0.01 px count as the same box too
        near = np.abs(exp_boxes[:, None, :] - my_boxes[None, :, :]).max(axis=2) <= 1e-2  # [K, K]
        iou = np.where(near, np.maximum(iou, 1.0), iou)
        same = (exp["labels"].numpy()[:, None] == my_labels[None, :]) & (
            np.abs(exp["scores"].numpy()[:, None] - my_scores[None, :]) <= 1e-3
        )
        # every torchvision detection has its own match: same label, score within 1e-3, IoU >= 0.99
        # (or corners within 0.01 px)
        best = np.where(same, iou, -1.0)
        matched = set()
        for k in np.argsort(-exp["scores"].numpy(), kind="stable"):
            j = int(np.argmax(np.where([i not in matched for i in range(len(mine))], best[k], -1.0)))
            assert best[k, j] >= 0.99, (name, int(k), float(best[k].max()))
            matched.add(j)

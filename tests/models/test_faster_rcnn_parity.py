"""Parity with torchvision's own Faster R-CNN, through `edgefpn predict` with ONNX Runtime.

For each layout: torchvision's model with seeded random weights, its state dict saved, loaded through
``model.weights`` with the shipped ``configs/torchvision/<layout>.yaml``, exported, and run by
``edgefpn predict --backend onnxruntime`` on image files; torchvision's ``model.eval()`` sees the same
letterboxed image (its transform resizes by exactly 1 and normalises with the same statistics), and its
boxes are mapped back to the original pixels with the same letterbox. Same count, IoU >= 0.99, scores
within 1e-3, same category (torchvision's label = edgefpn label + 1 = predict's category_id).

Both sides use 300 RPN proposals instead of 1000 (the box head on 1000 RoIs dominates the run time);
everything else is the config's torchvision defaults. Random weights give ~1/91 softmax scores, below
the 0.05 threshold, so the class logits are re-randomised to give tens of detections per image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torchvision.models.detection import (
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from edgefpn.cli import main
from edgefpn.config import load_config
from edgefpn.data.preprocess import boxes_to_original, load_image, preprocess
from edgefpn.data.synth import generate
from edgefpn.postprocess import box_iou

SIZE = 320
PROPOSALS = 300
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "torchvision"

# layout -> (torchvision builder, std of the re-randomised class logits' weights: logits of std ~2)
LAYOUTS = {
    "fasterrcnn_resnet50_fpn": (fasterrcnn_resnet50_fpn, 0.008),
    "fasterrcnn_resnet50_fpn_v2": (fasterrcnn_resnet50_fpn_v2, 0.004),
    "fasterrcnn_mobilenet_v3_large_fpn": (fasterrcnn_mobilenet_v3_large_fpn, 0.3),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parity-data")
    generate(
        root / "synth",
        num_train=1,
        num_val=2,
        num_calib=1,
        seed=3,
        min_side=240,
        max_side=400,
        show_progress=False,
    )
    folder = root / "images"
    folder.mkdir()
    for path in sorted((root / "synth" / "images").rglob("*.jpg"))[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    assert len(list(folder.iterdir())) == 2
    return folder


def _torchvision_model(layout: str, path: Path) -> torch.nn.Module:
    builder, logit_std = LAYOUTS[layout]
    torch.manual_seed(0)
    model = builder(weights=None, weights_backbone=None, num_classes=91, rpn_post_nms_top_n_test=PROPOSALS)
    with torch.no_grad():
        if layout == "fasterrcnn_mobilenet_v3_large_fpn":
            # Randomly initialised MobileNetV3 features vanish (FPN outputs of std ~1e-8): every proposal
            # would get the same scores, and tied scores make any order "correct". Scale the FPN's output
            # convs so its maps have std ~1 on a random image (an ordinary weight change, saved as such).
            features = model.eval().backbone(torch.randn(1, 3, SIZE, SIZE))
            scale = torch.cat([f.flatten() for f in features.values()]).std()
            for block in model.backbone.fpn.layer_blocks:
                block[0].weight.div_(scale)
                block[0].bias.div_(scale)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, logit_std)
    torch.save(model.state_dict(), path)
    return model.eval()


@pytest.mark.shipped  # torchvision's full-size layouts: `make test-shipped` (CI runs it after make test)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_predict_matches_torchvision(layout: str, images: Path, tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    reference = _torchvision_model(layout, weights)
    config = CONFIGS / f"{layout}.yaml"
    overrides = [
        f"model.weights={weights}",
        f"model.input_size=[{SIZE}, {SIZE}]",
        f"model.rpn.post_nms_top_n={PROPOSALS}",
        f"run.out={tmp_path / 'run'}",
        f"data.root={tmp_path / 'no-data'}",
        "data.builtin=false",
    ]
    cfg = load_config(config, overrides)
    out = tmp_path / "dets.json"
    args = [
        "predict",
        "--config",
        str(config),
        "--backend",
        "onnxruntime",
        "--images",
        str(images),
        "--save",
        str(out),
    ]
    for o in overrides:
        args += ["--set", o]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ours = json.loads(out.read_text())

    # torchvision on the same letterboxed pixels: un-normalise our input, let its transform normalise
    # it again with the same statistics and "resize" 320 -> 320 (scale 1: an exact copy).
    mean, std = np.array(cfg.model.mean, np.float32), np.array(cfg.model.std, np.float32)
    reference.transform = GeneralizedRCNNTransform(SIZE, SIZE, list(cfg.model.mean), list(cfg.model.std))
    for path in sorted(images.iterdir()):
        chw, lb = preprocess(load_image(path), size=(SIZE, SIZE), mean=cfg.model.mean, std=cfg.model.std)
        pixels = torch.from_numpy(chw * std[:, None, None] + mean[:, None, None])
        with torch.inference_mode():
            (ref,) = reference([pixels])
        ref_boxes = boxes_to_original(ref["boxes"].numpy(), lb)
        got = [d for d in ours if d["file_name"] == path.name]
        assert len(got) == len(ref_boxes) >= 20, (path.name, len(got), len(ref_boxes))
        xywh = np.array([d["bbox"] for d in got], np.float32)
        got_boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        # Match on the same class by the closest corners (IoU cannot: boxes in the letterbox padding
        # are clipped to zero height in original pixels), then judge by IoU where boxes have an area.
        same_class = np.array([[d["category_id"] for d in got]]) == ref["labels"].numpy()[:, None]  # [R, G]
        distance = np.abs(ref_boxes[:, None, :] - got_boxes[None, :, :]).max(axis=2)  # [R, G]
        match = np.where(same_class, distance, np.inf).argmin(axis=1)
        assert len(set(match.tolist())) == len(match)
        iou = box_iou(ref_boxes, got_boxes)[np.arange(len(match)), match]
        has_area = np.prod(ref_boxes[:, 2:] - ref_boxes[:, :2], axis=1) > 0
        assert has_area.sum() >= 20 and iou[has_area].min() >= 0.99
        assert distance[np.arange(len(match)), match].max() < 0.5
        np.testing.assert_allclose([got[j]["score"] for j in match], ref["scores"].numpy(), atol=1e-3)
        assert [got[j]["category_id"] for j in match] == ref["labels"].tolist()

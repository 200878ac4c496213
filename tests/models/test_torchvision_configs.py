"""The shipped torchvision configs run at their shipped sizes, as a new user runs them.

torchvision's own builder (``weights=None, weights_backbone=None``, seeded), its state dict saved, then
``edgefpn predict --config configs/torchvision/<layout>.yaml --set model.weights=FILE --backend onnxruntime``
on one image: train loads the weights, export writes and verifies the ONNX at the config's own input size
and proposal count, ONNX Runtime detects. Before the fix, export refused ``fasterrcnn_resnet50_fpn``
("ONNX Runtime disagrees with PyTorch on roi_box"): two exact FP32 runtimes order a near-tie among the
1000 proposals differently, which an element-by-element comparison cannot allow for.

The parity tests (``test_torchvision_parity.py``, ``test_faster_rcnn_parity.py``) check the detections
against torchvision's at 320 px; this one runs what we ship, at the size we ship it: one layout in the
default suite, all six in ``make test-shipped`` (CI runs it), to keep the suite's time (see ``LAYOUTS``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models.detection as tv_detection

from edgefpn.config import load_config
from tests.security.harness import cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "torchvision"

# Cost of one export + ORT predict at the shipped size, as CPU seconds of the edgefpn process (user + sys;
# measured side by side in one script on the 2-core machine under load, so only the ratios are firm):
# fcos_resnet50_fpn 56, retinanet_resnet50_fpn 57, fasterrcnn_mobilenet_v3_large_fpn 27, the ResNet-50
# Faster R-CNNs ~45-60 each: all six are ~5 CPU-minutes, several times the suite's budget for this. The
# suite runs the one that export refused (two-stage, 1000 proposals, 800x1088: a correct export refused
# only at the shipped size, near-tied proposal scores, is the bug class this catches);
# EDGEFPN_ALL_TORCHVISION_CONFIGS=1 runs the other five too: `make test-shipped`, which CI (.ci/run) runs
# after `make test`, so every config we ship runs on every CI run.
ALWAYS = ("fasterrcnn_resnet50_fpn",)
ON_REQUEST = (
    "fcos_resnet50_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
)
_ALL = os.environ.get("EDGEFPN_ALL_TORCHVISION_CONFIGS") == "1"
# all of them are marked `shipped`: `make test` leaves them to `make test-shipped` (42 s for the first
# alone on an AVX2-only VM, where the suite ran past its 10 minutes)
LAYOUTS = [
    *(pytest.param(name, marks=pytest.mark.shipped) for name in ALWAYS),
    *(
        pytest.param(
            name,
            marks=[
                pytest.mark.shipped,
                pytest.mark.skipif(
                    not _ALL,
                    reason="~30-60 CPU-s each at the shipped size; set EDGEFPN_ALL_TORCHVISION_CONFIGS=1",
                ),
            ],
        )
        for name in ON_REQUEST
    ),
]


@pytest.fixture(scope="module")
def one_image(tmp_path_factory) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("tv-image")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_shipped_config_runs_at_its_shipped_size(layout, one_image, tmp_path):
    config = CONFIGS / f"{layout}.yaml"
    cfg = load_config(config)
    torch.manual_seed(0)
    model = getattr(tv_detection, layout)(weights=None, weights_backbone=None)
    weights = tmp_path / f"{layout}.pt"
    torch.save(model.state_dict(), weights)
    del model
    run = tmp_path / "run"
    res = cli(
        "predict",
        "--config",
        config,
        "--set",
        f"model.weights={weights}",
        "--set",
        f"data.root={tmp_path / 'no-dataset'}",
        "--out",
        run,
        "--images",
        one_image,
        "--backend",
        "onnxruntime",
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    records = json.loads(res.stdout)
    assert all(r["file_name"] == "a.png" and len(r["bbox"]) == 4 for r in records)
    # the ONNX was exported and verified at the shipped size (and proposal count), not a reduced one
    manifest = json.loads((run / "model.onnx.manifest.json").read_text())
    assert manifest["input"]["shape"] == [1, 3, *cfg.model.input_size]
    if cfg.model.arch == "faster_rcnn":
        assert manifest["outputs"]["proposals"] == [1, cfg.model.rpn.post_nms_top_n, 4]

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import FCOS
from torchvision.models.detection.image_list import ImageList

from edgefpn.models import ARCHITECTURES, build_model
from edgefpn.models.fcos import fcos
from edgefpn.models.transform import IdentityTransform
from tests.conftest import tiny_build_kwargs

TINY = tiny_build_kwargs()


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0], [40.0, 8.0, 60.0, 30.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[100.0, 50.0, 150.0, 120.0]]), "labels": torch.tensor([1])},
    ]


def test_builds_torchvision_fcos_with_identity_transform() -> None:
    model = fcos(num_classes=3, **TINY)
    assert type(model) is FCOS
    assert isinstance(model.transform, IdentityTransform)
    assert model.head.classification_head.num_classes == 3
    assert len([m for m in model.head.classification_head.conv if isinstance(m, torch.nn.Conv2d)]) == 1


def test_identity_transform_neither_resizes_nor_normalises() -> None:
    images = [torch.rand(3, 96, 160) * 255, torch.rand(3, 96, 160) * 255]
    targets = _targets()
    image_list, out_targets = IdentityTransform()(images, targets)
    assert torch.equal(image_list.tensors, torch.stack(images))
    assert image_list.image_sizes == [(96, 160), (96, 160)]
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(out_targets, targets, strict=True))
    with pytest.raises(ValueError, match=r"\[3, 96, 160\], \[3, 64, 64\]"):
        IdentityTransform()([images[0], torch.rand(3, 64, 64)])


def _scale_sensitive_fcos() -> torch.nn.Module:
    # A fresh FCOS is nearly scale-invariant (bias-free convs, unit BN, zero FPN biases, GroupNorm in the
    # head), which would hide a rescaled input; frozen BN and random FPN biases break that symmetry.
    torch.manual_seed(0)
    model = fcos(num_classes=3, norm="frozen_bn", **TINY)
    for module in model.backbone.fpn.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.bias)
    return model.train()


def test_train_mode_returns_torchvisions_losses_on_the_given_tensors() -> None:
    model = _scale_sensitive_fcos()
    images = torch.randn(2, 3, 128, 160)  # already "normalised": rescaling it would change the loss
    targets = _targets()
    losses = model(list(images), targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(torch.isfinite(v) for v in losses.values())

    # The same loss computed by hand from torchvision's pieces on the untouched batch.
    reference = _scale_sensitive_fcos()
    features = list(reference.backbone(images).values())
    head_outputs = reference.head(features)
    anchors = reference.anchor_generator(ImageList(images, [(128, 160)] * 2), features)
    expected = reference.compute_loss(
        targets, head_outputs, anchors, [f.shape[-2] * f.shape[-1] for f in features]
    )
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-6)

    sum(losses.values()).backward()
    assert model.head.classification_head.cls_logits.weight.grad is not None
    assert model.backbone.body.conv1.weight.grad is not None


def test_eval_mode_detections_are_in_input_pixels() -> None:
    torch.manual_seed(0)
    model = fcos(num_classes=3, score_thresh=0.05, **TINY).eval()
    # Make every location confident and every box large so detections reach the image borders.
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, 5.0)
    torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, 4.0)
    with torch.no_grad():
        (detections,) = model([torch.randn(3, 96, 320)])
    boxes = detections["boxes"]
    assert boxes.shape[0] > 0 and set(detections) == {"boxes", "scores", "labels"}
    assert float(boxes[:, 2].max()) == pytest.approx(320.0) and float(boxes[:, 3].max()) == pytest.approx(
        96.0
    )
    assert int(detections["labels"].max()) <= 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fpn_channels": 48}, "multiple of 32.*got 48"),
        ({"num_classes": 0}, "got 0"),
        ({"head_convs": -1}, "got -1"),
        ({"backbone_name": "vgg16"}, "'vgg16'.*resnet18"),
    ],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fcos(**{"num_classes": 3, **TINY, **kwargs})


def test_registry_builds_every_architecture_and_rejects_unknown_names() -> None:
    # the one-stage archs share FCOS's builder arguments; faster_rcnn is covered by test_registry.py
    for arch in (a for a in ARCHITECTURES if a != "faster_rcnn"):
        model = build_model(arch=arch, num_classes=2, **TINY)
        assert model.head.classification_head.num_classes == 2
    with pytest.raises(ValueError, match="'yolo'.*fcos"):
        build_model(arch="yolo", num_classes=2)

"""RetinaNet (v1, v2) and the MobileNetV3 FPN in torchvision's exact state-dict layouts, and clear errors
when a checkpoint of one layout is loaded into another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models.detection import RetinaNet

from edgefpn.errors import CheckpointError
from edgefpn.models.backbones import mobilenet_fpn
from edgefpn.models.checkpoint import load_weights
from edgefpn.models.registry import build_model, export_wrapper
from edgefpn.models.transform import IdentityTransform

RESNET50 = {"backbone_name": "resnet50", "fpn_channels": 256, "head_convs": 4}


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize(
    ("layout", "arch", "norm"),
    [
        ("retinanet_resnet50_fpn", "retinanet", "frozen_bn"),
        ("retinanet_resnet50_fpn_v2", "retinanet_v2", "bn"),
    ],
)
def test_torchvision_retinanet_layouts_load_exactly(
    layout: str, arch: str, norm: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models.detection, layout)(
        weights=None, weights_backbone=None, num_classes=91
    )
    path = tmp_path / f"{layout}.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(arch=arch, num_classes=91, norm=norm, **RESNET50)
    assert type(model) is RetinaNet and isinstance(model.transform, IdentityTransform)
    assert _shapes(model.state_dict()) == _shapes(reference.state_dict())
    load_weights(model, path)
    theirs = reference.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    # same network: the same head outputs on the same input
    reference.eval()
    model.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected = reference.head(list(reference.backbone(x).values()))["cls_logits"]  # [1, HWA, C]
        got = export_wrapper(arch, model)(x)[0]  # cls_p3 [1, A*C, 16, 16]
    got = got.view(1, 9, 91, 16, 16).permute(0, 3, 4, 1, 2).reshape(1, -1, 91)
    torch.testing.assert_close(got, expected[:, : got.shape[1]], rtol=0, atol=0)


def test_v2_checkpoint_into_v1_model_names_the_first_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    v2 = torchvision.models.detection.retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None)
    torch.save(v2.state_dict(), tmp_path / "v2.pth")
    v1 = build_model(arch="retinanet", num_classes=91, norm="frozen_bn", **RESNET50)
    with pytest.raises(CheckpointError) as info:
        load_weights(v1, tmp_path / "v2.pth")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'v2.pth'}: ")
    # v1 heads have conv biases and no GroupNorm; v2's P6 reads C5 (2048 channels), v1's reads P5 (256)
    assert "missing keys (head.classification_head.conv.0.0.bias" in message
    assert "unexpected keys (head.classification_head.conv.0.1.weight" in message
    assert (
        "backbone.fpn.extra_blocks.p6.weight: checkpoint [256, 2048, 3, 3] vs model [256, 256, 3, 3]"
        in message
    )
    assert "\n" not in message


def test_mobilenet_fpn_has_fasterrcnn_mobilenet_v3_large_fpn_layout() -> None:
    torch.manual_seed(0)
    reference = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None
    ).backbone.eval()
    ours = mobilenet_fpn(
        fpn_channels=256, return_layers={13: "0", 16: "1"}, extra="pool", extra_names=("pool",)
    )
    assert _shapes(ours.state_dict()) == _shapes(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    ours.eval()
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert list(got) == list(expected) == ["0", "1", "pool"]
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)
    assert {k: s.stride for k, s in ours.output_shape().items()} == {"0": 32, "1": 32, "pool": 64}


@pytest.mark.parametrize("arch", ["fcos", "retinanet", "retinanet_v2"])
def test_mobilenet_backbone_gives_p3_to_p7(arch: str) -> None:
    model = build_model(
        arch=arch, num_classes=2, backbone_name="mobilenet_v3_large", fpn_channels=32, head_convs=1
    )
    wrapper = export_wrapper(arch, model)
    assert wrapper.levels == ("p3", "p4", "p5", "p6", "p7")
    with torch.no_grad():
        outs = wrapper(torch.randn(1, 3, 128, 96))
    assert [tuple(t.shape) for t in outs] == list(
        wrapper.output_shapes(batch=1, input_size=(128, 96)).values()
    )


def test_retinanet_head_convs_and_bad_arguments() -> None:
    model = build_model(
        arch="retinanet", num_classes=2, backbone_name="resnet18", fpn_channels=32, head_convs=2
    )
    assert len(model.head.classification_head.conv) == len(model.head.regression_head.conv) == 2
    with pytest.raises(ValueError, match=r"head_convs must be an int in \[0, 4\], got 5"):
        build_model(arch="retinanet", num_classes=2, head_convs=5)
    with pytest.raises(ValueError, match=r"multiple of 32 for v2\), got 48"):
        build_model(arch="retinanet_v2", num_classes=2, fpn_channels=48)
    with pytest.raises(ValueError, match="'vgg16'.*mobilenet_v3_large"):
        build_model(arch="retinanet", num_classes=2, backbone_name="vgg16")

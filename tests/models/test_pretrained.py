"""model.backbone_weights: a torchvision ImageNet state dict loads into every detector's backbone, with
torchvision's frozen stages and frozen BatchNorm; a file that does not fit is named in one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from edgefpn.config import load_config
from edgefpn.errors import CheckpointError
from edgefpn.models.pretrained import freeze_backbone, load_backbone_weights
from edgefpn.pipeline.train import _build
from tests.security.harness import cli, refused, tiny_sets


def _imagenet_file(tmp: Path, name: str, *, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision classification state dict with seeded random weights, saved like the hub's files."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():  # BN statistics too, so that a loader skipping buffers would be caught
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    state = net.state_dict()
    path = tmp / f"{name}-imagenet.pth"
    torch.save(state, path)
    return path, state


def _model(arch: str, backbone: str, weights: Path):
    cfg = load_config(
        None,
        [
            f"model.arch={arch}",
            f"model.backbone={backbone}",
            "model.backbone_width=64",
            f"model.backbone_weights={weights}",
            "model.fpn_channels=64",
        ],
    )
    return _build(cfg, 3)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    return _imagenet_file(tmp_path_factory.mktemp("imagenet"), "resnet18")


@pytest.mark.parametrize("arch", ["fcos", "faster_rcnn"])  # retinanet builds its backbone as fcos does
def test_resnet18_file_loads_into_the_backbone(resnet18_file, arch):
    path, state = resnet18_file
    model = _model(arch, "resnet18", path)
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.body.modules())
    load_backbone_weights(model, path, backbone="resnet18")
    body = model.backbone.body.state_dict()
    expected = {
        k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    assert set(body) == set(expected)
    for key, value in expected.items():
        assert torch.equal(body[key], value), key


def test_mobilenet_v3_large_file_loads(tmp_path):
    path, state = _imagenet_file(tmp_path, "mobilenet_v3_large")
    model = _model("fcos", "mobilenet_v3_large", path)
    load_backbone_weights(model, path, backbone="mobilenet_v3_large")
    body = model.backbone.body.state_dict()
    n = 0
    for key, value in state.items():
        if key.startswith("features.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(body[key.removeprefix("features.")], value), key
            n += 1
    assert n == len(body)


def _requires_grad(module: torch.nn.Module, prefix: str = "") -> dict[str, bool]:
    return {
        k.removeprefix(prefix): p.requires_grad for k, p in module.named_parameters() if k.startswith(prefix)
    }


def test_trainable_layers_follow_torchvision(resnet18_file):
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    path, _ = resnet18_file
    model = _model("fcos", "resnet18", path)
    seen = set()
    for layers in range(6):
        for p in model.parameters():
            p.requires_grad_(True)
        freeze_backbone(model, backbone="resnet18", trainable_layers=layers)
        ours = _requires_grad(model.backbone.body)
        ref = _resnet_fpn_extractor(torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d), layers)
        assert ours == _requires_grad(ref.body), layers
        seen.add(sum(ours.values()))
    assert len(seen) == 6  # every setting freezes a different amount


def test_mobilenet_trainable_layers_follow_torchvision():
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor

    model = _model("fcos", "mobilenet_v3_large", Path("unused.pth"))
    for layers in (0, 2, 6):
        for p in model.parameters():
            p.requires_grad_(True)
        freeze_backbone(model, backbone="mobilenet_v3_large", trainable_layers=layers)
        ref = _mobilenet_extractor(
            torchvision.models.mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, layers
        )
        assert _requires_grad(model.backbone.body) == _requires_grad(ref, "body."), layers


def test_wrong_file_names_the_first_problems(tmp_path, resnet18_file):
    path, _ = _imagenet_file(tmp_path, "resnet34")
    model = _model("fcos", "resnet18", path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(model, path, backbone="resnet18")
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "unexpected keys (layer1.2." in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded

    state = dict(resnet18_file[1])
    state["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"][:, :3]
    del state["layer4.1.bn2.bias"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(
        CheckpointError,
        match=r"1 missing keys \(layer4\.1\.bn2\.bias\); 1 shape mismatches "
        r"\(layer2\.0\.conv1\.weight: checkpoint \[128, 3, 3, 3\]",
    ):
        load_backbone_weights(model, bad, backbone="resnet18")


@pytest.mark.slow
def test_cli_mismatched_backbone_weights_exit_2(tmp_path, resnet18_file):
    state = dict(resnet18_file[1])
    path = tmp_path / "resnet18-bad.pth"
    state["conv1.weight"] = state["conv1.weight"][:32]
    torch.save(state, path)
    out = tmp_path / "run"
    result = cli(
        "train",
        *tiny_sets("model.backbone_width=64", f"model.backbone_weights={path}", data_root=tmp_path / "data"),
        "--out",
        out,
        "--quiet",
    )
    refused(result, names=[path, "conv1.weight"], problem=r"1 shape mismatches")
    assert not (out / "model.pt").exists()


def test_config_refuses_slim_backbone_and_stray_trainable_layers():
    from edgefpn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.backbone_weights needs backbone_width 64"):
        load_config(None, ["model.backbone_width=32", "model.backbone_weights=x.pth"])
    with pytest.raises(ConfigError, match=r"model\.trainable_layers applies to a pretrained backbone"):
        load_config(None, ["model.trainable_layers=2"])
    with pytest.raises(ConfigError, match=r"model\.trainable_layers must be in 0\.\.5 for resnet18, got 6"):
        load_config(None, ["model.backbone_weights=x.pth", "model.trainable_layers=6"])


@pytest.mark.slow
def test_train_stage_with_pretrained_backbone_augmentation_and_bf16(tmp_path, resnet18_file):
    """The train stage end to end: frozen stages leave training as they came from the file, the top
    stages train, the file's sha256 is an input, and augmentation + bf16 autocast run."""
    from edgefpn.artifacts import read_manifest, sha256_file
    from edgefpn.models.checkpoint import load_checkpoint
    from edgefpn.pipeline import train
    from tests.conftest import tiny_overrides

    path, state = resnet18_file
    cfg = load_config(
        None,
        [
            *tiny_overrides(tmp_path),
            "model.backbone_width=64",
            f"model.backbone_weights={path}",
            "model.trainable_layers=2",
            "train.amp=bf16",
            "train.augment.scale_jitter=[0.5,1.5]",
            "train.augment.crop={prob: 1.0}",
            "train.augment.photometric={}",
        ],
    )
    train.run(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    sd = ckpt["state_dict"]
    assert ckpt["meta"]["build"]["norm"] == "frozen_bn"
    for key in (
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer2.1.conv2.weight",
        "layer2.0.bn1.running_mean",
    ):
        assert torch.equal(sd[f"backbone.body.{key}"], state[key]), key  # frozen: as loaded
    for key in ("layer3.0.conv1.weight", "layer4.1.conv2.weight"):
        assert not torch.equal(sd[f"backbone.body.{key}"], state[key]), key  # trainable: trained
    assert sd["backbone.body.layer3.0.conv1.weight"].dtype == torch.float32
    inputs = read_manifest(tmp_path / "run" / "model.pt")["inputs"]
    assert inputs["backbone_weights"] == sha256_file(path)

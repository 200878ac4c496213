from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

from edgefpn.errors import CheckpointError
from edgefpn.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from edgefpn.models.fcos import fcos
from tests.conftest import tiny_build_kwargs

TINY = tiny_build_kwargs()
META = {
    "arch": "fcos",
    "backbone": "resnet18",
    "num_classes": 3,
    "class_names": ["a", "b", "c"],
    "fpn_channels": 32,
    "head_convs": 1,
    "norm": "bn",
    "input_size": [128, 160],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def _tiny(num_classes: int = 3, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return fcos(num_classes=num_classes, **{**TINY, **kwargs})


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip(tmp_path: Path) -> None:
    model, other = _tiny(seed=0), _tiny(seed=1)
    # Make BN statistics non-default so that buffers are round-tripped, not just parameters.
    model.train()(
        list(torch.randn(2, 3, 64, 64)), [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()}] * 2
    )
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, meta=META)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]

    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "edgefpn" and ckpt["version"] == 1 and ckpt["meta"] == META
    assert load_weights(other, path) == META
    _assert_same_weights(model, other)


def test_meta_must_be_plain(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"meta\.size.*tensor"):
        save_checkpoint(tmp_path / "m.pt", _tiny(), meta={"size": torch.ones(1)})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_plain_and_wrapped_state_dicts_load(tmp_path: Path, wrap: str | None) -> None:
    source, target = _tiny(seed=0), _tiny(seed=1)
    state = source.state_dict()
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, tmp_path / "sd.pt")
    assert load_weights(target, tmp_path / "sd.pt") == {}
    _assert_same_weights(source, target)


def test_torchvision_fcos_resnet50_state_dict_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None)
    path = tmp_path / "fcos_resnet50_fpn.pt"
    torch.save(reference.state_dict(), path)
    model = fcos(backbone_name="resnet50", num_classes=91, fpn_channels=256, head_convs=4, norm="frozen_bn")

    ours, theirs = model.state_dict(), reference.state_dict()
    # Same layout; torchvision's weights=None build uses trainable BN, which adds BN step counters.
    assert {k: v.shape for k, v in ours.items()} == {
        k: v.shape for k, v in theirs.items() if not k.endswith("num_batches_tracked")
    }
    load_weights(model, path)
    ours = model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items())


def test_frozen_bn_checkpoint_loads_into_trainable_bn(tmp_path: Path) -> None:
    # torchvision's pretrained detection checkpoints are FrozenBatchNorm2d: no num_batches_tracked.
    source = _tiny(seed=0, norm="frozen_bn")
    assert not any(k.endswith("num_batches_tracked") for k in source.state_dict())
    torch.save(source.state_dict(), tmp_path / "frozen.pt")
    target = _tiny(seed=1, norm="bn")
    load_weights(target, tmp_path / "frozen.pt")
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_shape_mismatch_names_keys_and_loads_nothing(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.pt", _tiny(num_classes=3, seed=0), meta=META)
    target = _tiny(num_classes=6, seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(target, tmp_path / "c.pt")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'c.pt'}: 2 shape mismatches (")
    assert (
        "head.classification_head.cls_logits.weight: checkpoint [3, 32, 3, 3] vs model [6, 32, 3, 3]"
        in message
    )
    assert "\n" not in message
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing partially loaded


def test_wrong_keys_are_counted_and_named(tmp_path: Path) -> None:
    state = _tiny().state_dict()
    renamed = {("heads." + k[5:] if k.startswith("head.") else k): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "k.pt")
    num_head_keys = sum(k.startswith("head.") for k in state)
    with pytest.raises(CheckpointError) as info:
        load_weights(_tiny(), tmp_path / "k.pt")
    message = str(info.value)
    assert f"{num_head_keys} missing keys (head.classification_head." in message
    assert f"{num_head_keys} unexpected keys (heads.classification_head." in message
    assert message.count("…") == 2  # only the first three of each are named


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "full.pt", _tiny(), meta=META)
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: truncated or corrupt checkpoint"):
        load_weights(_tiny(), tmp_path / "cut.pt")


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint"])
def test_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"x\.pt: "):
        load_checkpoint(tmp_path / "x.pt")


def test_tensors_but_no_state_dict(tmp_path: Path) -> None:
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: not a checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


class _Payload:
    """Unpickling this runs a shell command (the classic malicious-checkpoint trick)."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def test_code_running_pickle_is_refused(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Payload(canary)}, path)
    assert not canary.exists()
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused to unpickle.*system"):
        load_weights(_tiny(), path)
    assert not canary.exists()


@pytest.mark.parametrize(
    "meta",
    [
        {"arch": ["fcos"], "num_classes": 2, "build": {}},  # not a name
        {"arch": "fcos", "num_classes": 2, "build": {"no_such_argument": 1}},  # TypeError in the builder
        {"arch": "fcos", "num_classes": 2, "build": {"fpn_channels": 33}},  # ValueError in the builder
    ],
)
def test_tampered_build_metadata_is_a_checkpoint_error(meta: dict) -> None:
    from edgefpn.models.loading import build_from_meta

    with pytest.raises(CheckpointError, match="checkpoint metadata"):
        build_from_meta(meta)

"""Registry consistency: every architecture is registered on both sides and keeps its advertised contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgefpn.config import BACKBONE_NAMES, ModelConfig, load_config
from edgefpn.errors import ConfigError
from edgefpn.models import ARCHITECTURES, ExportModule, arch_spec, export_wrapper
from edgefpn.models.backbones import FPN_BACKBONES
from edgefpn.postprocess import DECODERS, Detections, PostprocessParams, decoder_for, split_output_name

SIZE = (96, 128)  # (H, W): not square, so a swapped H / W shows


def test_torch_and_numpy_registries_name_the_same_architectures() -> None:
    assert list(ARCHITECTURES) == list(DECODERS)
    assert BACKBONE_NAMES == FPN_BACKBONES


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_wrapper_outputs_match_what_it_advertises_and_decode(arch: str) -> None:
    spec = arch_spec(arch)
    cfg = ModelConfig(arch=arch, fpn_channels=32, head_convs=1)
    kwargs = spec.build_kwargs(cfg)
    assert all(isinstance(v, str | int | float | bool | None) for v in kwargs.values()), (
        kwargs
    )  # checkpoint meta
    torch.manual_seed(0)
    model = spec.builder(num_classes=3, **kwargs).eval()
    wrapper = export_wrapper(arch, model)
    assert isinstance(wrapper, ExportModule) and not wrapper.training
    names = wrapper.output_names()
    shapes = wrapper.output_shapes(batch=2, input_size=SIZE)
    assert list(shapes) == names and len(set(names)) == len(names)
    with torch.inference_mode():
        outs = wrapper(torch.randn(2, 3, *SIZE))
    assert [tuple(t.shape) for t in outs] == list(shapes.values())
    decoder = decoder_for(arch)
    # the per-level outputs cover exactly the decoder's levels
    assert {lvl for n in names if (lvl := split_output_name(n)[1])} >= set(decoder.levels)
    params = PostprocessParams(score_thresh=0.0, strides=decoder.strides, levels=decoder.levels)
    dets = decoder.decode({n: t.numpy() for n, t in zip(names, outs, strict=True)}, params, image_size=SIZE)
    assert len(dets) == 2 and all(isinstance(d, Detections) and len(d) > 0 for d in dets)
    for d in dets:
        assert (d.boxes[:, 0::2] >= 0).all() and (d.boxes[:, 0::2] <= SIZE[1]).all()
        assert (d.boxes[:, 1::2] >= 0).all() and (d.boxes[:, 1::2] <= SIZE[0]).all()
        assert ((d.labels >= 0) & (d.labels < 3)).all() and np.all(np.diff(d.scores) <= 0)


def test_unknown_arch_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="'yolo'.*fcos"):
        decoder_for("yolo")
    with pytest.raises(ConfigError, match="model.arch must be one of .*'yolo'"):
        load_config(None, ["model.arch=yolo"])
    with pytest.raises(ConfigError, match="model.backbone must be one of .*mobilenet_v3_large.*'vgg16'"):
        load_config(None, ["model.backbone=vgg16"])


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("cls_p3", ("cls", "p3")),
        ("rpn_box_p2", ("rpn_box", "p2")),
        ("proposals", ("proposals", None)),
        ("roi_cls", ("roi_cls", None)),
        ("box_px", ("box_px", None)),
    ],
)
def test_split_output_name(name: str, split: tuple) -> None:
    assert split_output_name(name) == split


@pytest.mark.parametrize(
    ("arch", "channels"),
    [
        ("fcos", {"cls": 3, "box": 4, "ctr": 1}),
        ("retinanet", {"cls": 9 * 3, "box": 9 * 4}),  # 9 anchors per location
        ("retinanet_v2", {"cls": 9 * 3, "box": 9 * 4}),
    ],
)
def test_one_stage_wrappers_share_the_per_level_base(arch: str, channels: dict[str, int]) -> None:
    from edgefpn.models.outputs import PerLevelExportWrapper

    spec = arch_spec(arch)
    model = spec.builder(
        num_classes=3, **spec.build_kwargs(ModelConfig(arch=arch, fpn_channels=32, head_convs=1))
    )
    wrapper = export_wrapper(arch, model)
    assert isinstance(wrapper, PerLevelExportWrapper)
    assert wrapper.levels == ("p3", "p4", "p5", "p6", "p7") and wrapper.num_classes == 3
    assert wrapper.branch_channels() == channels
    assert wrapper.output_names() == [f"{b}_{lvl}" for b in channels for lvl in wrapper.levels]
    # the wrapper holds the model's own backbone and head, nothing else
    assert list(wrapper.state_dict()) == [
        k for k in model.state_dict() if k.startswith(("backbone.", "head."))
    ]

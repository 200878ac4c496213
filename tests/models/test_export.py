from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgefpn.models.export import export_onnx
from edgefpn.models.fcos import FCOSExportWrapper, fcos, fcos_output_names, fcos_output_shapes
from tests.conftest import tiny_build_kwargs

TINY = tiny_build_kwargs()
LEVELS = ("p3", "p4", "p5", "p6", "p7")


@pytest.fixture(scope="module")
def wrapper() -> FCOSExportWrapper:
    torch.manual_seed(0)
    model = fcos(num_classes=3, **TINY).eval()
    # Non-trivial head biases so that a swapped or missing output would not go unnoticed.
    for conv in (model.head.regression_head.bbox_reg, model.head.regression_head.bbox_ctrness):
        torch.nn.init.normal_(conv.bias, std=1.0)
    return FCOSExportWrapper(model).eval()


def _flatten(levels: list[torch.Tensor], channels: int) -> torch.Tensor:
    # torchvision's head flatten: [N, A*K, H, W] -> [N, HWA, K], then concatenated over levels.
    flat = []
    for t in levels:
        n, _, h, w = t.shape
        flat.append(t.view(n, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, channels))
    return torch.cat(flat, dim=1)


def test_output_names_order() -> None:
    names = fcos_output_names()
    assert names[:5] == [f"cls_{lvl}" for lvl in LEVELS]
    assert names[5:10] == [f"box_{lvl}" for lvl in LEVELS]
    assert names[10:] == [f"ctr_{lvl}" for lvl in LEVELS]


@pytest.mark.parametrize("size", [(128, 160), (100, 130)])
def test_outputs_match_advertised_shapes(wrapper: FCOSExportWrapper, size: tuple[int, int]) -> None:
    with torch.no_grad():
        outputs = wrapper(torch.randn(2, 3, *size))
    expected = fcos_output_shapes(batch=2, input_size=size, num_classes=3)
    assert list(expected) == wrapper.output_names()
    assert [tuple(o.shape) for o in outputs] == list(expected.values())


def test_output_shapes_square_size() -> None:
    shapes = fcos_output_shapes(batch=1, input_size=320, num_classes=5)
    assert shapes["cls_p3"] == (1, 5, 40, 40)
    assert shapes["box_p5"] == (1, 4, 10, 10)
    assert shapes["ctr_p7"] == (1, 1, 3, 3)  # 320 / 128 = 2.5 rounds up


def test_wrapper_equals_torchvision_head(wrapper: FCOSExportWrapper) -> None:
    images = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        outputs = wrapper(images)
        head = wrapper.head(list(wrapper.backbone(images).values()))
    cls, box, ctr = outputs[:5], outputs[5:10], outputs[10:]
    assert torch.equal(_flatten(list(cls), 3), head["cls_logits"])
    assert torch.equal(_flatten(list(box), 4), head["bbox_regression"])
    assert torch.equal(_flatten(list(ctr), 1), head["bbox_ctrness"])


def test_same_tuple_layout_in_train_mode(wrapper: FCOSExportWrapper) -> None:
    images = torch.randn(2, 3, 64, 64)
    wrapper.train()
    try:
        with torch.no_grad():
            train_out = wrapper(images)
    finally:
        wrapper.eval()
    expected = fcos_output_shapes(batch=2, input_size=64, num_classes=3)
    assert isinstance(train_out, tuple)
    assert [tuple(o.shape) for o in train_out] == list(expected.values())


def test_single_value_groupnorm_level_runs(wrapper: FCOSExportWrapper) -> None:
    # 32 FPN channels in GroupNorm(32) and a 1x1 P7 (128x128 input) at batch 1: F.group_norm refuses it.
    with torch.no_grad():
        outputs = wrapper(torch.randn(1, 3, 128, 128))
    assert tuple(outputs[4].shape) == (1, 3, 1, 1)
    assert all(torch.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize("opset", [17, 18])
def test_onnx_export_matches_onnxruntime(wrapper: FCOSExportWrapper, tmp_path: Path, opset: int) -> None:
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the exporter's known noise is filtered inside export_onnx
        export_onnx(wrapper, path, input_size=128, batch=1, opset=opset)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp or external-data files

    model = onnx.load(str(path))
    assert model.opset_import[0].version == opset
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == fcos_output_names()
    expected = fcos_output_shapes(batch=1, input_size=128, num_classes=3)
    for out in model.graph.output:
        assert tuple(d.dim_value for d in out.type.tensor_type.shape.dim) == expected[out.name]

    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        reference = [t.numpy() for t in wrapper(images)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})
    for name, ref, out in zip(fcos_output_names(), reference, got, strict=True):
        assert out.shape == ref.shape, name
        assert np.abs(out - ref).max() <= 1e-4, name


def test_onnx_export_is_deterministic(wrapper: FCOSExportWrapper, tmp_path: Path) -> None:
    digests = []
    for name in ("a.onnx", "b.onnx"):
        export_onnx(wrapper, tmp_path / name, input_size=(64, 96), batch=2, opset=17)
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_export_rejects_bad_sizes(wrapper: FCOSExportWrapper, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="got 0"):
        export_onnx(wrapper, tmp_path / "m.onnx", input_size=(0, 64), opset=17)
    assert list(tmp_path.iterdir()) == []

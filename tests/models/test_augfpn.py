"""AugFPN: static adaptive pooling, the neck's layout, Consistent Supervision, and a static export."""

from __future__ import annotations

import collections
import copy

import numpy as np
import onnx
import onnxslim
import pytest
import torch
from torch.nn import functional as F
from torchvision.models.detection import FCOS
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

from edgefpn.models.checkpoint import save_checkpoint
from edgefpn.models.export import export_onnx
from edgefpn.models.fcos import FCOSExportWrapper, fcos
from edgefpn.models.loading import model_from_checkpoint
from edgefpn.models.necks import (
    AugFCOS,
    AugFPN,
    StaticAdaptiveAvgPool2d,
    adaptive_pool_matrix,
    attach_neck,
    detector_class,
)
from tests.conftest import tiny_build_kwargs

TINY = tiny_build_kwargs(num_classes=3)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0], [40.0, 8.0, 60.0, 30.0]]),
            "labels": torch.tensor([0, 2]),
        },
        {"boxes": torch.tensor([[70.0, 50.0, 150.0, 120.0]]), "labels": torch.tensor([1])},
    ]


def _augfpn_fcos(**kwargs) -> FCOS:
    torch.manual_seed(0)
    model = fcos(neck="augfpn", **TINY, **kwargs)
    # fresh convs have zero biases, which would hide a wrong RFA term; give them values
    for module in model.backbone.fpn.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.bias, std=0.5)
    return model


@pytest.mark.parametrize(
    ("size", "ratio"), [((10, 10), 0.3), ((10, 7), 0.3), ((5, 4), 0.1), ((13, 9), 0.45), ((8, 8), 1.0)]
)
def test_static_pooling_equals_torch_adaptive_avg_pool(size, ratio) -> None:
    x = torch.randn(2, 5, *size)
    pool = StaticAdaptiveAvgPool2d(ratio)
    out_size = pool.output_size(*size)
    assert out_size == (max(1, int(ratio * size[0])), max(1, int(ratio * size[1])))
    torch.testing.assert_close(pool(x), F.adaptive_avg_pool2d(x, out_size), rtol=0, atol=1e-6)


def test_pool_matrix_windows_overlap_when_sizes_do_not_divide() -> None:
    m = adaptive_pool_matrix(10, 3)  # torch's windows: [0, 4), [3, 7), [6, 10)
    expected = torch.zeros(3, 10)
    expected[0, 0:4], expected[1, 3:7], expected[2, 6:10] = 0.25, 0.25, 0.25
    assert torch.equal(m, expected)
    with pytest.raises(ValueError, match="out_size must be <= in_size, got out_size=4, in_size=3"):
        adaptive_pool_matrix(3, 4)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got 1.5"):
        StaticAdaptiveAvgPool2d(1.5)


def test_augfpn_keeps_the_fpn_layout_and_weights_and_adds_only_rfa() -> None:
    torch.manual_seed(0)
    plain = fcos(**TINY)
    torch.manual_seed(0)
    aug = fcos(neck="augfpn", **TINY)
    assert type(plain) is FCOS and type(plain.backbone.fpn) is FeaturePyramidNetwork
    assert type(aug) is AugFCOS and isinstance(aug.backbone.fpn, AugFPN)
    plain_sd, aug_sd = plain.state_dict(), aug.state_dict()
    # same seed, same FPN and head weights: RFA draws from a forked RNG
    assert all(torch.equal(plain_sd[k], aug_sd[k]) for k in plain_sd)
    assert {k.split(".rfa.")[0] for k in set(aug_sd) - set(plain_sd)} == {"backbone.fpn"}
    with pytest.raises(ValueError, match="unknown neck 'bifpn'; valid names: fpn, augfpn"):
        fcos(neck="bifpn", **TINY)
    with pytest.raises(ValueError, match="unknown neck 'pan'"):
        attach_neck(plain.backbone, neck="pan")
    assert detector_class(FCOS, neck="fpn") is FCOS


def test_rfa_changes_only_what_reaches_the_top_lateral() -> None:
    model = _augfpn_fcos().eval()
    features = model.backbone.body(torch.randn(1, 3, 160, 160))
    neck = model.backbone.fpn
    with torch.no_grad():
        out = neck(features)
        rfa = neck.rfa
        neck.rfa = _Zero()
        no_rfa = neck(features)
        neck.rfa = rfa
    for level in ("p3", "p4", "p5", "p6", "p7"):
        assert not torch.allclose(out[level], no_rfa[level]), level  # M5 feeds every level top-down
    assert out["p3"].shape == no_rfa["p3"].shape == (1, 32, 20, 20)


class _Zero(torch.nn.Module):
    def forward(self, c5: torch.Tensor) -> torch.Tensor:
        return torch.zeros(())


def test_consistent_supervision_adds_weighted_aux_losses_in_training_only() -> None:
    images, targets = torch.randn(2, 3, 160, 160), _targets()
    with_aux = _augfpn_fcos(aux_loss_weight=0.5).train()
    without = _augfpn_fcos(aux_loss_weight=0.0).train()
    losses = with_aux(images, targets)
    main = without(images, targets)
    assert set(main) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert set(losses) == set(main) | {f"aux_{k}" for k in main}
    for name in main:  # the auxiliary pass leaves the main losses alone
        torch.testing.assert_close(losses[name], main[name])
    # the aux terms are FCOS's own loss on the raw laterals (+ P6/P7 from them), times the weight
    neck = with_aux.backbone.fpn
    feats = with_aux.backbone.body(images)
    with neck.keep_laterals() as kept:
        neck(feats)
    pyramid = list(kept[0].values())
    assert [p.shape[-1] for p in pyramid] == [20, 10, 5, 3, 2]
    head_out = with_aux.head(pyramid)
    image_list, tgts = with_aux.transform(list(images), targets)
    anchors = with_aux.anchor_generator(image_list, pyramid)
    expected = with_aux.compute_loss(tgts, head_out, anchors, [p.shape[2] * p.shape[3] for p in pyramid])
    for name, value in expected.items():
        torch.testing.assert_close(losses[f"aux_{name}"], 0.5 * value)
    assert with_aux.backbone.fpn._kept is None  # nothing is kept past the training step
    sum(losses.values()).backward()
    assert with_aux.backbone.fpn.rfa.fuse.attention[2].weight.grad.abs().sum() > 0
    with torch.no_grad():
        dets = with_aux.eval()(images)
    assert len(dets) == 2 and set(dets[0]) == {"boxes", "scores", "labels"}


def _conv_calls(model: torch.nn.Module, run) -> int:
    calls = [0]
    hooks = [
        m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return calls[0]


def _static(value: onnx.ValueInfoProto) -> bool:
    dims = value.type.tensor_type.shape.dim
    return all(d.HasField("dim_value") and d.dim_value > 0 for d in dims)


def test_export_is_static_matches_torch_and_has_no_auxiliary_path(tmp_path) -> None:
    import onnxruntime as ort

    model = _augfpn_fcos().eval()
    wrapper = FCOSExportWrapper(model).eval()
    path = tmp_path / "augfpn.onnx"
    export_onnx(wrapper, path, input_size=(160, 192), opset=17)  # C5 5x6: pools 1x1, 1x1, 1x1 and 1x2
    proto = onnx.load(str(path))
    # as the export stage ships it: onnxslim folds the exporter's Shape->Concat size chains of every
    # Resize (the plain FPN's too), after which shape inference sees every tensor's static shape
    slim = onnxslim.slim(proto)
    inferred = onnx.shape_inference.infer_shapes(slim, strict_mode=True).graph
    values = [*inferred.input, *inferred.value_info, *inferred.output]
    assert values and all(_static(v) for v in values), [v.name for v in values if not _static(v)][:5]
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert "GlobalAveragePool" not in ops and not any("AdaptiveAvgPool" in op for op in ops)
    assert ops["MatMul"] == 6  # 3 ratios x (rows, cols)

    # Only the eval path is exported: one Conv node per Conv2d call of an eval forward (the training
    # step runs more: the auxiliary pass), and the ONNX is the same whatever the aux weight.
    x = torch.randn(1, 3, 160, 192)
    with torch.no_grad():
        eval_convs = _conv_calls(model, lambda: wrapper(x))
    trained = copy.deepcopy(model).train()  # a training step moves BatchNorm statistics: use a copy
    train_convs = _conv_calls(trained, lambda: trained(torch.randn(2, 3, 160, 192), _targets()))
    assert ops["Conv"] == eval_convs < train_convs
    no_aux = FCOSExportWrapper(_augfpn_fcos(aux_loss_weight=0.0).eval()).eval()
    export_onnx(no_aux, tmp_path / "no_aux.onnx", input_size=(160, 192), opset=17)
    other = onnx.load(str(tmp_path / "no_aux.onnx"))
    assert [n.op_type for n in other.graph.node] == [n.op_type for n in proto.graph.node]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = [t.numpy() for t in wrapper(x)]
    assert max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True)) <= 1e-4


@pytest.mark.openvino
def test_export_runs_on_openvino(tmp_path) -> None:
    pytest.importorskip("openvino", reason="needs the openvino extra: pip install 'edgefpn[openvino]'")
    wrapper = FCOSExportWrapper(_augfpn_fcos().eval()).eval()
    path = tmp_path / "augfpn.onnx"
    export_onnx(wrapper, path, input_size=(160, 160), opset=17)
    from edgefpn.backends.openvino import shared_core  # one Core per process: see shared_core

    compiled = shared_core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.randn(1, 3, 160, 160)
    got = compiled({"images": x.numpy()})
    with torch.no_grad():
        ref = [t.numpy() for t in wrapper(x)]
    assert max(float(np.abs(r - got[compiled.outputs[i]]).max()) for i, r in enumerate(ref)) <= 1e-4


def test_checkpoint_rebuilds_augfpn_from_its_metadata(tmp_path) -> None:
    model = _augfpn_fcos().eval()
    build = {"backbone_name": "resnet18", "backbone_width": 64, "fpn_channels": 32, "head_convs": 1}
    meta = {"arch": "fcos", "num_classes": 3, "build": {**build, "norm": "bn", "neck": "augfpn"}}
    save_checkpoint(tmp_path / "model.pt", model, meta=meta)
    rebuilt, _ = model_from_checkpoint(tmp_path / "model.pt")
    assert type(rebuilt) is AugFCOS
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        for a, b in zip(FCOSExportWrapper(model)(x), FCOSExportWrapper(rebuilt)(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["retinanet", "retinanet_v2"])
def test_retinanet_with_augfpn_trains_with_aux_losses_and_exports_static(arch, tmp_path) -> None:
    import onnxruntime as ort

    from edgefpn.models.necks import AugRetinaNet
    from edgefpn.models.registry import build_model, export_wrapper

    torch.manual_seed(0)
    model = build_model(
        arch=arch, num_classes=3, backbone_name="resnet18", fpn_channels=32, head_convs=1, neck="augfpn"
    )
    assert type(model) is AugRetinaNet and isinstance(model.backbone.fpn, AugFPN)
    losses = model.train()(torch.randn(2, 3, 128, 160), _targets())
    assert set(losses) == {"classification", "bbox_regression", "aux_classification", "aux_bbox_regression"}
    assert all(torch.isfinite(v) for v in losses.values())

    wrapper = export_wrapper(arch, model.eval())
    path = tmp_path / f"{arch}.onnx"
    export_onnx(wrapper, path, input_size=(128, 160), opset=17)
    x = torch.randn(1, 3, 128, 160)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = [t.numpy() for t in wrapper(x)]
    assert max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True)) <= 1e-4
    assert all(_static(o) for o in onnx.load(str(path)).graph.output)

"""AugFPN on Faster R-CNN: Soft RoI Selection, Consistent Supervision on RPN + RoI losses, static export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torchvision.ops import roi_align

from edgefpn.models.export import export_onnx
from edgefpn.models.faster_rcnn import AugEdgeFasterRCNN, EdgeFasterRCNN, faster_rcnn
from edgefpn.models.faster_rcnn_export import FasterRCNNExportWrapper, MultiLevelRoIAlign
from edgefpn.models.necks import AugFPN, SoftRoISelection, StaticRoIPool
from edgefpn.postprocess import PostprocessParams, faster_rcnn_decode
from tests.conftest import tiny_build_kwargs
from tests.models.test_faster_rcnn import _assert_same_detections

TINY = tiny_build_kwargs("faster_rcnn")
PARAMS = PostprocessParams(score_thresh=0.05, nms_thresh=0.5, detections_per_img=100)
SIZE = (96, 128)
LEVELS = ("p2", "p3", "p4", "p5")


def _tiny(**kwargs) -> EdgeFasterRCNN:
    torch.manual_seed(0)
    model = faster_rcnn(num_classes=4, neck="augfpn", **{**TINY, **kwargs}).eval()
    with torch.no_grad():  # peaked class scores (random init gives ~1/(K+1), below 0.05) and live biases
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
        for module in [*model.backbone.fpn.rfa.modules(), *model.roi_heads.box_roi_pool.modules()]:
            if isinstance(module, torch.nn.Conv2d):
                module.bias.normal_(0, 0.5)
    return model


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {
            "boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0], [40.0, 8.0, 120.0, 50.0]]),
            "labels": torch.tensor([0, 3]),
        },
        {"boxes": torch.tensor([[70.0, 30.0, 110.0, 90.0]]), "labels": torch.tensor([1])},
    ]


def test_soft_roi_selection_fuses_every_level_with_learned_weights() -> None:
    torch.manual_seed(0)
    soft = SoftRoISelection(LEVELS, 8)
    features = [torch.randn(2, 8, 96 // s, 128 // s) for s in (4, 8, 16, 32)]
    rois = torch.tensor([[0, 4.0, 4.0, 30.0, 40.0], [1, 10.0, 0.0, 120.0, 90.0], [0, 50.0, 20.0, 60.0, 30.0]])
    got = soft(features, rois)
    per_level = [
        roi_align(f, rois, output_size=7, spatial_scale=1 / s, sampling_ratio=2, aligned=False)
        for f, s in zip(features, (4, 8, 16, 32), strict=True)
    ]
    weights = torch.sigmoid(soft.fuse.attention(torch.cat(per_level, dim=1)))  # [R, 4, 7, 7]
    expected = sum(p * weights[:, i : i + 1] for i, p in enumerate(per_level))
    torch.testing.assert_close(got, expected)
    assert got.shape == (3, 8, 7, 7)
    # every level contributes, unlike the FPN rule's single level
    hard = MultiLevelRoIAlign(LEVELS, strides=(4, 8, 16, 32))(features, rois)
    assert not torch.allclose(got, hard)
    with pytest.raises(ValueError, match="expected 4 feature levels, got 3"):
        soft(features[:3], rois)


def test_augfpn_faster_rcnn_layout_and_training_losses() -> None:
    torch.manual_seed(0)
    plain = faster_rcnn(num_classes=4, **TINY)
    model = _tiny()
    assert type(model) is AugEdgeFasterRCNN and isinstance(model.backbone.fpn, AugFPN)
    assert isinstance(model.roi_heads.box_roi_pool, StaticRoIPool)
    new = set(model.state_dict()) - set(plain.state_dict())
    assert new and all(
        k.startswith(("backbone.fpn.rfa.", "roi_heads.box_roi_pool.pooler.fuse.")) for k in new
    )
    assert set(plain.state_dict()) <= set(model.state_dict())

    model.train()
    losses = model(torch.randn(2, 3, *SIZE), _targets())
    main = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == main | {f"aux_{k}" for k in main}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.box_roi_pool.pooler.fuse.attention[0].weight.grad.abs().sum() > 0
    assert model.backbone.fpn.rfa.fuse.attention[0].weight.grad.abs().sum() > 0


def test_augfpn_faster_rcnn_v2_layout_builds() -> None:
    model = faster_rcnn(num_classes=4, neck="augfpn", variant="v2", **TINY)
    assert (
        isinstance(model.backbone.fpn, AugFPN) and len(model.backbone.fpn.inner_blocks[0]) == 2
    )  # conv + BN


def test_static_export_matches_torchvision_eval_in_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _tiny(rpn_post_nms_top_n=200)
    wrapper = FasterRCNNExportWrapper(model).eval()
    assert wrapper.roi_align is model.roi_heads.box_roi_pool.pooler  # the soft selection, not the level rule
    images = torch.randn(1, 3, *SIZE)
    path = tmp_path / "frcnn_augfpn.onnx"
    export_onnx(wrapper, path, input_size=SIZE, opset=17)
    graph = onnx.load(str(path)).graph
    names = wrapper.output_names()
    shapes = {o.name: tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in graph.output}
    assert shapes == wrapper.output_shapes(batch=1, input_size=SIZE)  # every dim static (0 would be dynamic)
    assert sum(n.op_type == "RoiAlign" for n in graph.node) == len(LEVELS)

    with torch.inference_mode():
        (ref,) = model(images)
        torch_outs = [t.numpy() for t in wrapper(images)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(names, session.run(None, {"images": images.numpy()}), strict=True))
    for name, value in zip(names, torch_outs, strict=True):
        np.testing.assert_allclose(got[name], value, atol=1e-4, rtol=1e-4, err_msg=name)
    _assert_same_detections(ref, faster_rcnn_decode(got, PARAMS, image_size=SIZE)[0], min_iou=0.999)

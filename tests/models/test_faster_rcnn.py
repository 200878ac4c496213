"""Faster R-CNN: torchvision's layouts, labels 0..K-1, and the static export graph against torchvision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2

from edgefpn.models.faster_rcnn import FASTER_RCNN_LEVELS, faster_rcnn
from edgefpn.models.faster_rcnn_export import FasterRCNNExportWrapper, MultiLevelRoIAlign
from edgefpn.models.registry import build_model
from edgefpn.postprocess import PostprocessParams, box_iou, faster_rcnn_decode
from tests.conftest import tiny_build_kwargs

TINY = tiny_build_kwargs("faster_rcnn")
PARAMS = PostprocessParams(score_thresh=0.05, nms_thresh=0.5, detections_per_img=100)
SIZE = (96, 128)


def _tiny(num_classes: int = 4, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = faster_rcnn(num_classes=num_classes, **{**TINY, **kwargs}).eval()
    with torch.no_grad():  # peaked class scores: random init gives ~1/(K+1) everywhere, below 0.05
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.3)
    return model


def _keys(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize(
    ("torchvision_builder", "kwargs"),
    [(fasterrcnn_resnet50_fpn, {"norm": "frozen_bn"}), (fasterrcnn_resnet50_fpn_v2, {"variant": "v2"})],
)
def test_state_dict_layout_is_torchvisions(torchvision_builder, kwargs) -> None:
    ours = faster_rcnn(backbone_name="resnet50", num_classes=90, fpn_channels=256, **kwargs)
    theirs = torchvision_builder(weights=None, weights_backbone=None, num_classes=91)
    assert _keys(ours) == _keys(theirs)


def test_builder_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="variant must be one of.*'v3'"):
        faster_rcnn(num_classes=3, variant="v3")
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        faster_rcnn(num_classes=0)
    with pytest.raises(ValueError, match="rpn_post_nms_top_n must be a positive int, got -1"):
        faster_rcnn(num_classes=3, rpn_post_nms_top_n=-1)


def test_builder_rejects_keys_it_does_not_take() -> None:
    # another arch's setting or a misspelt one fails, naming the key, instead of being ignored
    with pytest.raises(TypeError, match="'head_convs'"):
        faster_rcnn(num_classes=3, head_convs=2)
    with pytest.raises(
        ValueError, match="faster_rcnn takes no argument 'rpn_nms_tresh'; valid: backbone_name"
    ):
        build_model(arch="faster_rcnn", num_classes=3, rpn_nms_tresh=0.5)
    with pytest.raises(ValueError, match="fcos takes no argument 'representation_size'"):
        build_model(arch="fcos", num_classes=3, representation_size=64)


def test_labels_are_zero_based_in_training_and_eval() -> None:
    model = _tiny(num_classes=2)
    model.train()
    images = torch.randn(2, 3, *SIZE)
    # label 1 is the last object class: torchvision would see 2, inside its 3-way softmax
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])}] * 2
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.inference_mode():
        (det,) = model(images[:1])
    assert len(det["labels"]) > 0 and det["labels"].min() >= 0 and det["labels"].max() <= 1


def _assert_same_detections(ref: dict[str, torch.Tensor], got, *, min_iou: float = 0.99) -> None:
    assert len(got) == len(ref["scores"]) > 10
    iou = box_iou(ref["boxes"].numpy(), got.boxes)  # [R, G]
    match = iou.argmax(axis=1)
    assert len(set(match.tolist())) == len(match)  # one-to-one
    assert iou.max(axis=1).min() >= min_iou
    np.testing.assert_allclose(got.scores[match], ref["scores"].numpy(), atol=1e-3)
    np.testing.assert_array_equal(got.labels[match], ref["labels"].numpy())


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_wrapper_and_decode_equal_torchvision_eval(variant: str) -> None:
    model = _tiny(variant=variant, rpn_post_nms_top_n=200)
    images = torch.randn(2, 3, *SIZE)
    wrapper = FasterRCNNExportWrapper(model).eval()
    with torch.inference_mode():
        refs = model(images)
        outs = dict(zip(wrapper.output_names(), (t.numpy() for t in wrapper(images)), strict=True))
    shapes = wrapper.output_shapes(batch=2, input_size=SIZE)
    assert {k: v.shape for k, v in outs.items()} == shapes
    assert shapes["roi_cls"] == (2, 200, 5) and shapes["rpn_obj_p6"] == (2, 3, 2, 2)
    for ref, got in zip(refs, faster_rcnn_decode(outs, PARAMS, image_size=SIZE), strict=True):
        _assert_same_detections(ref, got, min_iou=0.9999)


def test_padding_proposals_are_ignored() -> None:
    """A 64x64 input has fewer candidates after NMS than post_nms_top_n: the rest is marked padding."""
    model = _tiny(rpn_post_nms_top_n=2000, rpn_nms_thresh=0.3)
    wrapper = FasterRCNNExportWrapper(model).eval()
    with torch.inference_mode():
        outs = dict(
            zip(wrapper.output_names(), (t.numpy() for t in wrapper(torch.randn(1, 3, 64, 64))), strict=True)
        )
    valid = outs["proposal_scores"] >= 0
    assert 0 < valid.sum() < valid.size
    assert np.all(outs["proposals"][~valid] == 0)
    poisoned = {**outs, "roi_cls": np.where(valid[..., None], outs["roi_cls"], 1e4)}  # would win every class
    assert all(len(d) > 0 for d in faster_rcnn_decode(outs, PARAMS, image_size=(64, 64)))
    for a, b in zip(
        faster_rcnn_decode(outs, PARAMS, image_size=(64, 64)),
        faster_rcnn_decode(poisoned, PARAMS, image_size=(64, 64)),
        strict=True,
    ):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    none_valid = {**outs, "proposal_scores": np.full_like(outs["proposal_scores"], -1.0)}
    assert len(faster_rcnn_decode(none_valid, PARAMS, image_size=(64, 64))[0]) == 0


def test_level_rule_is_torchvisions() -> None:
    from torchvision.ops.poolers import LevelMapper

    sides = torch.tensor([1.0, 56.0, 111.9, 112.0, 150.0, 224.0, 300.0, 448.0, 1000.0])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    ours = MultiLevelRoIAlign(FASTER_RCNN_LEVELS[:4], strides=(4, 8, 16, 32)).level_index(boxes)
    assert ours.tolist() == LevelMapper(2, 5)([boxes]).float().tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_decode_rejects_wrong_outputs() -> None:
    with pytest.raises(ValueError, match=r"outputs lack \['roi_box'\]"):
        faster_rcnn_decode(
            {
                "proposals": np.zeros((1, 2, 4)),
                "proposal_scores": np.zeros((1, 2)),
                "roi_cls": np.zeros((1, 2, 3)),
            },
            PARAMS,
            image_size=(64, 64),
        )
    with pytest.raises(ValueError, match="expected proposals"):
        faster_rcnn_decode(
            {
                "proposals": np.zeros((1, 2, 4)),
                "proposal_scores": np.zeros((1, 2)),
                "roi_cls": np.zeros((1, 2, 3)),
                "roi_box": np.zeros((1, 2, 8)),
            },
            PARAMS,
            image_size=(64, 64),
        )


def test_static_onnx_runs_in_onnxruntime_and_openvino(tmp_path: Path) -> None:
    import onnxruntime as ort

    model = _tiny(rpn_post_nms_top_n=300)
    wrapper = FasterRCNNExportWrapper(model).eval()  # fresh: the anchors are first made while tracing
    names = wrapper.output_names()
    images = torch.randn(1, 3, *SIZE)
    path = tmp_path / "frcnn.onnx"
    torch.onnx.export(
        wrapper,
        (images,),
        str(path),
        input_names=["images"],
        output_names=names,
        opset_version=17,
        dynamo=False,
    )
    graph = onnx.load(str(path)).graph
    shapes = {o.name: tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in graph.output}
    assert shapes == wrapper.output_shapes(batch=1, input_size=SIZE)  # every dim static (0 would be dynamic)
    ops = {n.op_type for n in graph.node}
    assert {"NonMaxSuppression", "RoiAlign", "TopK"} <= ops

    with torch.inference_mode():
        (ref,) = model(images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(names, session.run(None, {"images": images.numpy()}), strict=True))
    _assert_same_detections(ref, faster_rcnn_decode(got, PARAMS, image_size=SIZE)[0])

    pytest.importorskip("openvino")
    from edgefpn.backends.openvino import shared_core  # one Core per process: see shared_core

    core = shared_core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled({"images": images.numpy()})
    got_ov = {n: result[compiled.output(n)] for n in names}
    _assert_same_detections(ref, faster_rcnn_decode(got_ov, PARAMS, image_size=SIZE)[0])


def test_mobilenet_layout_is_torchvisions() -> None:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    ours = faster_rcnn(backbone_name="mobilenet_v3_large", num_classes=90, fpn_channels=256, norm="frozen_bn")
    theirs = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=91)
    assert _keys(ours) == _keys(theirs)
    wrapper = FasterRCNNExportWrapper(ours.eval())
    assert wrapper.strides == (32, 32, 64)
    assert wrapper.output_shapes(batch=1, input_size=(320, 320))["rpn_obj_p5b"] == (1, 15, 10, 10)


@pytest.mark.parametrize("backbone_name", ["resnet18", "mobilenet_v3_large"])
def test_backbones_are_the_shared_fpn_backbones(backbone_name: str) -> None:
    # one implementation of the MobileNet FPN and of the named max-pool level (edgefpn.models.backbones),
    # advertising the levels and strides the detector records
    from edgefpn.models.backbones import LastLevelMaxPoolNamed, MobileNetFPN, ResNetFPN

    model = faster_rcnn(num_classes=2, **{**TINY, "backbone_name": backbone_name})
    backbone = model.backbone
    assert isinstance(backbone, MobileNetFPN if backbone_name == "mobilenet_v3_large" else ResNetFPN)
    assert type(backbone.fpn.extra_blocks) is LastLevelMaxPoolNamed and backbone.fpn.extra_blocks.name == "p6"
    assert {k: s.stride for k, s in backbone.output_shape().items()} == model.level_strides


def test_no_faster_rcnn_twin_in_the_necks() -> None:
    # faster_rcnn builds its AugFPN detector as AugEdgeFasterRCNN (labels 0..K-1); a second, unused
    # Consistent Supervision Faster R-CNN in the necks package would be dead code that drifts
    from torchvision.models.detection import FasterRCNN

    from edgefpn.models import necks

    assert not hasattr(necks, "AugFasterRCNN")
    with pytest.raises(ValueError, match="no AugFPN variant of FasterRCNN"):
        necks.detector_class(FasterRCNN, neck="augfpn")

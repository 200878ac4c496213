"""The in-graph decode + NMS (edgefpn.e2e) against the numpy decoders, on ONNX Runtime and OpenVINO.

The tails are fed synthetic raw outputs with continuous random values (no exact score ties, which the
two NMS implementations may order differently), shaped and scaled so that every part binds: the score
threshold, the per-level top-k, NMS (overlapping boxes) and the detection cap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefpn.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalise_coefficients, preprocess
from edgefpn.e2e.graft import E2ESpec, graft_onnx
from edgefpn.e2e.graph import DET_OUTPUTS, THRESH_INPUT, detection_tail, uint8_head
from edgefpn.lint import lint_onnx
from edgefpn.postprocess import PostprocessParams, decode, decoder_for
from edgefpn.postprocess.nms import _float32_below

SIZE = (96, 128)


def _raw(arch: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if arch == "faster_rcnn":
        k, c1 = 60, 4
        xy = rng.uniform(0, 80, (1, k, 2))
        wh = rng.uniform(8, 40, (1, k, 2))
        scores = rng.uniform(0, 1, (1, k))
        scores[0, -7:] = -1.0  # padding rows of the static proposal count
        return {
            "proposals": np.concatenate([xy, xy + wh], -1).astype(np.float32),
            "proposal_scores": scores.astype(np.float32),
            "roi_cls": rng.normal(0, 2, (1, k, c1)).astype(np.float32),
            "roi_box": rng.normal(0, 1, (1, k, 4 * c1)).astype(np.float32),
        }
    c, a = (3, 1) if arch == "fcos" else (3, 9)
    out = {}
    for lvl, s in zip(decoder_for(arch).levels, decoder_for(arch).strides, strict=True):
        h, w = -(-SIZE[0] // s), -(-SIZE[1] // s)
        out[f"cls_{lvl}"] = rng.normal(-1, 2, (1, a * c, h, w)).astype(np.float32)
        if arch == "fcos":
            out[f"box_{lvl}"] = rng.uniform(0, 3, (1, 4, h, w)).astype(np.float32)
            out[f"ctr_{lvl}"] = rng.normal(0, 2, (1, 1, h, w)).astype(np.float32)
        else:
            out[f"box_{lvl}"] = rng.normal(0, 0.3, (1, a * 4, h, w)).astype(np.float32)
    return out


def _run_onnx(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))


def _run_openvino(model: onnx.ModelProto, feed: dict[str, np.ndarray], tmp: Path) -> dict[str, np.ndarray]:
    import openvino as ov

    onnx.save(model, tmp / "m.onnx")
    from edgefpn.backends.openvino import shared_core  # one Core per process: see shared_core

    compiled = shared_core().compile_model(
        ov.convert_model(str(tmp / "m.onnx")),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1},
    )
    return {port.get_any_name(): np.asarray(v) for port, v in compiled(feed).items()}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize(
    ("arch", "topk"),
    [("fcos", 40), ("fcos", 400), ("retinanet", 40), ("retinanet", 4000), ("faster_rcnn", 40)],
)
def test_in_graph_decode_and_nms_equal_the_numpy_decoder(
    arch: str, topk: int, backend: str, tmp_path: Path
) -> None:
    """The in-graph tail equals the numpy decoder where every part binds: threshold, NMS, the detection
    cap, and the per-level top-k both where it cuts (k=40) and where the graph skips it because no
    level has more than k passing scores (the larger k; p3 still has more than k scores in all)."""
    d = decoder_for(arch)
    params = PostprocessParams(
        score_thresh=0.3,
        nms_thresh=0.5,
        topk_candidates=topk,
        detections_per_img=25,
        strides=d.strides,
        levels=d.levels,
    )
    tail = detection_tail(
        arch, {k: list(v.shape) for k, v in _raw(arch, np.random.default_rng(0)).items()}, params, SIZE
    )
    assert [o.name for o in tail.graph.output] == list(DET_OUTPUTS)
    assert not lint_onnx(tail), [str(f) for f in lint_onnx(tail)]  # the TensorRT lint passes it: no finding
    bound = {"cap": 0, "nms": 0, "topk": 0}
    if arch != "faster_rcnn":  # the cut is conditional (If) on the levels where it can bind
        assert any(node.op_type == "If" for node in tail.graph.node)
    for seed in range(3):
        raw = _raw(arch, np.random.default_rng(seed))
        ref = decode(arch, raw, params, image_size=SIZE)[0]
        loose = decode(
            arch,
            raw,
            PostprocessParams(**{**params.__dict__, "nms_thresh": 1.0, "detections_per_img": 10_000}),
            image_size=SIZE,
        )[0]
        bound["cap"] += len(ref) == params.detections_per_img
        bound["nms"] += len(loose) > len(ref)
        bound["topk"] += arch != "faster_rcnn" and max(_passing(arch, raw, params)) > topk
        # the threshold is an input: the one graph at the params' threshold and at a higher one
        for thresh in (params.score_thresh, 0.6):
            if thresh != params.score_thresh:
                p_hi = PostprocessParams(**{**params.__dict__, "score_thresh": thresh})
                ref = decode(arch, raw, p_hi, image_size=SIZE)[0]
            feed = {**raw, THRESH_INPUT: np.array([_float32_below(thresh)], np.float32)}
            out = _run_onnx(tail, feed) if backend == "onnxruntime" else _run_openvino(tail, feed, tmp_path)
            n = int(out["num_dets"][0])
            assert n == len(ref) > 0
            assert thresh == params.score_thresh or ref.scores.min() > thresh
            np.testing.assert_array_equal(out["det_labels"][0, :n], ref.labels)
            np.testing.assert_allclose(out["det_scores"][0, :n], ref.scores, rtol=0, atol=2e-6)
            np.testing.assert_allclose(out["det_boxes"][0, :n], ref.boxes, rtol=0, atol=2e-3)
            # past num_dets: zeros and label -1, a fixed shape for the device
            assert (out["det_labels"][0, n:] == -1).all() and not out["det_scores"][0, n:].any()
    assert bound["nms"] == 3 and (arch == "faster_rcnn" or bound["cap"] >= 1), bound  # each part ran
    if arch != "faster_rcnn":  # k=40: the cut runs on every seed; the larger k: the graph skips it
        assert bound["topk"] == (3 if topk == 40 else 0), bound


def _passing(arch: str, raw: dict[str, np.ndarray], params: PostprocessParams) -> list[int]:
    """Per level, how many (position, class) scores pass the threshold (what the top-k cut sees)."""
    counts = []
    for lvl in params.levels:
        score = 1 / (1 + np.exp(-raw[f"cls_{lvl}"].astype(np.float64)))
        if arch == "fcos":
            score = np.sqrt(score / (1 + np.exp(-raw[f"ctr_{lvl}"].astype(np.float64))))
        counts.append(int((score > params.score_thresh).sum()))
    return counts


def test_uint8_head_equals_the_float_preprocessing_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (61, 90, 3), dtype=np.uint8)  # letterboxed into 96x128, padded below
    want, _ = preprocess(image, size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    head = uint8_head(1, SIZE, normalise_coefficients(IMAGENET_MEAN, IMAGENET_STD))
    from edgefpn.data.preprocess import letterbox_u8

    u8, valid_hw, _ = letterbox_u8(image, size=SIZE)
    u8[0, valid_hw[0, 0] :, :] = 255  # whatever the host leaves in the padding, the graph masks it to 0.0
    got = _run_onnx(head, {"images_u8": u8, "valid_hw": valid_hw})["images"]
    assert got.dtype == np.float32 and got.shape == (1, 3, *SIZE)
    np.testing.assert_array_equal(got[0], want)


def test_graft_keeps_the_network_and_refuses_an_old_opset() -> None:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *SIZE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, *SIZE])
    net = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["images"], ["y"], name="net")], "n", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    spec = E2ESpec(
        arch="fcos",
        uint8=True,
        nms=False,
        params=PostprocessParams(),
        input_size=SIZE,
        coef=normalise_coefficients(IMAGENET_MEAN, IMAGENET_STD),
    )
    grafted = graft_onnx(net, spec)
    onnx.checker.check_model(grafted, full_check=True)
    assert [i.name for i in grafted.graph.input] == ["images_u8", "valid_hw"]
    assert "net" in [n.name for n in grafted.graph.node]
    meta = {p.key: p.value for p in grafted.metadata_props}
    assert meta["edgefpn.input_type"] == "uint8" and meta["edgefpn.contract"] == "raw"
    net.opset_import[0].version = 11
    with pytest.raises(ValueError, match="opset >= 13"):
        graft_onnx(net, spec)

"""TensorRT and the in-graph contract: a real TensorRT 10 build of a grafted tail, against ONNX Runtime.

Marked ``tensorrt``: skipped (with the reason) where tensorrt or a CUDA GPU is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefpn.backends import EngineSpec
from edgefpn.backends.tensorrt import TensorRTRunner, build_engine
from edgefpn.config import TensorRTConfig
from edgefpn.e2e.graph import THRESH_INPUT, detection_tail
from edgefpn.postprocess import PostprocessParams, decode, decoder_for
from edgefpn.postprocess.nms import _float32_below
from tests.e2e.test_graph import SIZE, _raw


@pytest.mark.tensorrt
@pytest.mark.parametrize("arch", ["fcos", "retinanet", "faster_rcnn"])
def test_tensorrt_builds_and_runs_the_in_graph_decode_and_nms(trt, arch: str, tmp_path: Path) -> None:
    from edgefpn.artifacts import write_manifest

    d = decoder_for(arch)
    params = PostprocessParams(
        score_thresh=0.3,
        nms_thresh=0.5,
        topk_candidates=40,
        detections_per_img=25,
        strides=d.strides,
        levels=d.levels,
    )
    raw = _raw(arch, np.random.default_rng(0))
    tail = detection_tail(arch, {k: list(v.shape) for k, v in raw.items()}, params, SIZE)
    onnx.save(tail, tmp_path / "tail.onnx")
    engine = tmp_path / "fp16-e2e" / "model.engine"
    settings = TensorRTConfig(workspace_mb=256)
    logged: list[str] = []
    result = build_engine(
        tmp_path / "tail.onnx", engine, precision="fp16", settings=settings, cache_dir=None, log=logged.append
    )
    assert any("pinned to float32" in line for line in logged), logged  # FP16 engine, float32 decode + NMS
    write_manifest(
        engine, stage="build", config_hash="test", inputs={}, extra={"tensorrt": result.manifest(settings)}
    )
    ref = decode(arch, raw, params, image_size=SIZE)[0]
    with TensorRTRunner(EngineSpec("trt", "tensorrt", "fp16", engine), threads=1) as r:
        out = r.infer({**raw, THRESH_INPUT: np.array([_float32_below(params.score_thresh)], np.float32)})
    n = int(out["num_dets"][0])
    assert out["det_labels"].dtype == np.int32 and n == len(ref) > 0
    np.testing.assert_array_equal(out["det_labels"][0, :n], ref.labels)
    np.testing.assert_allclose(out["det_scores"][0, :n], ref.scores, atol=1e-5)
    np.testing.assert_allclose(out["det_boxes"][0, :n], ref.boxes, atol=1e-2)

"""Join the uint8 head and the detection tail (``edgefpn.e2e.graph``) to an already-built network.

Grafting, rather than exporting a second network, keeps the network part of an end-to-end engine the
raw engine's own bytes: the same weights, the same INT8 scales and float-fallback islands, the same
FP16 conversion. The two contracts then differ only in what is added around the network, which is
what ``check`` compares them on.

* ONNX (``graft_onnx``): any raw ONNX, Q/DQ INT8 and FP16 (float32 I/O) included.
* OpenVINO (``graft_openvino``): an IR (FP32, FP16-compressed, or NNCF INT8), with the head and tail
  converted from ONNX and wired to the IR's parameter and results through OpenVINO's graph API.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefpn.backends.base import INPUT_NAME
from edgefpn.e2e.builder import _MIN_OPSET
from edgefpn.e2e.graph import DET_OUTPUTS, THRESH_INPUT, detection_tail, uint8_head
from edgefpn.postprocess import PostprocessParams

__all__ = ["E2ESpec", "e2e_parts", "graft_onnx", "graft_openvino", "metadata"]


class E2ESpec:
    """What is grafted: ``uint8`` input and/or in-graph ``nms``, with the thresholds and layout they need."""

    def __init__(
        self,
        *,
        arch: str,
        uint8: bool,
        nms: bool,
        params: PostprocessParams,
        input_size: tuple[int, int],
        coef: np.ndarray,
    ) -> None:
        if not (uint8 or nms):
            raise ValueError("an end-to-end graph needs uint8 input, in-graph NMS, or both")
        self.arch, self.uint8, self.nms, self.params = arch, uint8, nms, params
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.coef = np.asarray(coef, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "input": "uint8" if self.uint8 else "float",
            "nms": self.nms,
            "arch": self.arch,
            "postprocess": {
                "score_thresh": p.score_thresh,
                "nms_thresh": p.nms_thresh,
                "topk_candidates": p.topk_candidates,
                "detections_per_img": p.detections_per_img,
            },
        }


def metadata(spec: E2ESpec) -> dict[str, str]:
    """``metadata_props`` an end-to-end graph adds (the raw ones are kept)."""
    return {
        "edgefpn.contract": "detections" if spec.nms else "raw",
        "edgefpn.input_type": "uint8" if spec.uint8 else "float",
        "edgefpn.e2e": json.dumps(spec.describe(), sort_keys=True),
    }


def _raw_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    return {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}


def e2e_parts(
    network: onnx.ModelProto, spec: E2ESpec
) -> tuple[onnx.ModelProto | None, onnx.ModelProto | None]:
    """(head, tail) models for ``network`` (None where ``spec`` does not ask for one)."""
    (inp,) = [i for i in network.graph.input if i.name == INPUT_NAME]
    batch = inp.type.tensor_type.shape.dim[0].dim_value
    head = uint8_head(batch, spec.input_size, spec.coef) if spec.uint8 else None
    tail = (
        detection_tail(spec.arch, _raw_shapes(network.graph), spec.params, spec.input_size)
        if spec.nms
        else None
    )
    return head, tail


def graft_onnx(network: onnx.ModelProto, spec: E2ESpec) -> onnx.ModelProto:
    """``network`` with the head before its ``images`` input and/or the tail after its outputs.

    Raises:
        ValueError: the network's default-domain opset is below 13 (the tail needs it; raising a
            network's opset could change what its own nodes mean, so it is refused, not bumped).
    """
    opset = next((o.version for o in network.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < _MIN_OPSET:
        raise ValueError(
            f"an end-to-end graph needs opset >= {_MIN_OPSET}; the network has {opset} "
            f"(set export.opset to {_MIN_OPSET} or more)"
        )
    head, tail = e2e_parts(network, spec)
    model = onnx.ModelProto()
    model.CopyFrom(network)
    g = model.graph
    if head is not None:
        keep = [i for i in g.input if i.name != INPUT_NAME]
        del g.input[:]
        g.input.extend([*head.graph.input, *keep])
        nodes = [*head.graph.node, *g.node]
        del g.node[:]
        g.node.extend(nodes)
        g.initializer.extend(head.graph.initializer)
    if tail is not None:
        produced = {o.name for o in g.output}
        g.input.extend(i for i in tail.graph.input if i.name not in produced)  # score_thresh
        del g.output[:]
        g.output.extend(tail.graph.output)
        g.node.extend(tail.graph.node)
        g.initializer.extend(tail.graph.initializer)
    _toposort(g)
    for key, value in metadata(spec).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def _toposort(g: onnx.GraphProto) -> None:
    """Order ``g``'s nodes so that each comes after its producers (onnxconverter's FP16 conversion
    leaves its input Cast after the first Conv, which onnx.checker refuses once the graph is edited)."""
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a dangling input: leave it for onnx.checker to name
            ordered += rest
            break
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def graft_openvino(ir_xml: Path, network_onnx: onnx.ModelProto, spec: E2ESpec, out_xml: Path) -> list[str]:
    """The IR at ``ir_xml`` with the head and/or tail wired on, saved to ``out_xml``; returns output names.

    ``network_onnx`` is the ONNX the IR was made from (its input and output shapes size the head and tail).
    Weights are saved as they are (``compress_to_fp16=False``: an FP16 IR keeps its f16 constants, an
    FP32 one is not compressed).
    """
    import openvino as ov

    from edgefpn.backends.openvino import shared_core

    head, tail = e2e_parts(network_onnx, spec)
    net = shared_core().read_model(str(ir_xml))
    params = list(net.get_parameters())
    results = list(net.get_results())
    with tempfile.TemporaryDirectory() as tmp:
        if head is not None:
            onnx.save(head, f"{tmp}/head.onnx")
            head_ov = ov.convert_model(f"{tmp}/head.onnx")
            (param,) = [p for p in params if INPUT_NAME in p.output(0).get_names()]
            param.output(0).replace(head_ov.output(INPUT_NAME).get_node().input_value(0))
            params = [*head_ov.get_parameters(), *(p for p in params if p is not param)]
        if tail is not None:
            onnx.save(tail, f"{tmp}/tail.onnx")
            tail_ov = ov.convert_model(f"{tmp}/tail.onnx")
            produced = {}
            for r in results:
                src = r.input_value(0)
                for name in r.output(0).get_names() | src.get_names():
                    produced[name] = src
            for p in tail_ov.get_parameters():
                if THRESH_INPUT in p.output(0).get_names():  # the tail's own input: the model's too
                    params.append(p)
                    continue
                (name,) = [n for n in p.output(0).get_names() if n in produced][:1] or [None]
                if name is None:
                    raise ValueError(f"{ir_xml}: the IR has no output {sorted(p.output(0).get_names())}")
                p.output(0).replace(produced[name])
            results = list(tail_ov.get_results())
    model = ov.Model(results, params, "edgefpn_e2e")
    for key, value in metadata(spec).items():
        model.set_rt_info(value, ["framework", key])
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    names = [port.get_any_name() for port in model.outputs]
    if spec.nms and names != list(DET_OUTPUTS):
        raise ValueError(f"{out_xml}: grafted IR outputs {names}, expected {list(DET_OUTPUTS)}")
    return names

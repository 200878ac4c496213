"""The end-to-end engines (``export.nms`` / ``export.input=uint8``): an ``-e2e`` twin of every raw engine.

Each is its raw twin with ``edgefpn.e2e``'s head and/or tail grafted on, so the network inside is the
raw engine's own (INT8 scales and float islands included) and the in-graph decode and NMS stay float:

* ``model.e2e.onnx`` from ``model.onnx`` (made by the export stage);
* ``model.int8.e2e.onnx`` / ``model.int8.ort.e2e.onnx`` / ``model.fp16.e2e.onnx`` from the quantize
  stage's files;
* ``openvino/<precision>-e2e/`` from ``openvino/<precision>/`` (the NNCF IR for int8);
* ``tensorrt/<precision>-e2e/model.engine`` built from the e2e ONNX of that precision.

Every manifest records ``e2e_source`` (the run-dir path of its twin) with that file's sha256 as input
``source``, so lineage chains an e2e engine to ``model.pt`` through its twin.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from edgefpn.artifacts import Artifact, atomic_output
from edgefpn.backend_names import CHECKED
from edgefpn.backends import BACKENDS
from edgefpn.config import Config
from edgefpn.inference import PrePost
from edgefpn.manifests import Record, record
from edgefpn.pipeline.common import log, postprocess_params, recorded_arch
from edgefpn.stages import E2E_ONNX, E2E_OPENVINO, StageKey

__all__ = [
    "ENGINE_FILES",
    "ONNX_TWINS",
    "contract_of",
    "enabled",
    "in_contract",
    "make_onnx",
    "make_openvino",
    "raw_twin",
]

SUFFIX = "-e2e"
ONNX_TWINS = {
    "model.onnx": "model.e2e.onnx",
    "model.fp16.onnx": "model.fp16.e2e.onnx",
    "model.int8.onnx": "model.int8.e2e.onnx",  # TensorRT's symmetric QDQ: tensorrt-int8-e2e
    "model.int8.ort.onnx": "model.int8.ort.e2e.onnx",
}  # ONNX Runtime's CPU flavour


def _twin_path(rel: str, precision: str) -> str:
    """Where the twin of the engine at ``rel`` lives: its ONNX twin, else the same path with the
    precision folder renamed ``<precision>-e2e`` (``openvino/int8-e2e``,
    ``tensorrt/fp16-e2e/model.engine``)."""
    if rel in ONNX_TWINS:
        return ONNX_TWINS[rel]
    return "/".join(f"{part}{SUFFIX}" if part == precision else part for part in rel.split("/"))


# (name, backend, precision, file in the run dir), as check.ENGINE_FILES: a twin of every engine of a
# checked backend that runs ONNX (the twins of ONNX_TWINS) or grafts its own (its record's e2e)
ENGINE_FILES: tuple[tuple[str, str, str, str], ...] = tuple(
    (f"{name}{SUFFIX}", backend, precision, _twin_path(rel, precision))
    for backend in CHECKED
    if BACKENDS[backend].reads_onnx or BACKENDS[backend].e2e is not None
    for name, _, precision, rel in BACKENDS[backend].engines(Path("."))
)


def enabled(cfg: Config) -> bool:
    """Whether the config asks for the end-to-end engines."""
    return bool(cfg.export.nms) or cfg.export.input == "uint8"


def raw_twin(name: str) -> str:
    """``openvino-int8-e2e`` -> ``openvino-int8``: the raw-output engine an e2e engine is checked against."""
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def contract_of(cfg: Config, name: str) -> tuple[str, str]:
    """(input type, contract) of engine ``name`` under ``cfg``: ``("float", "raw")`` for a raw engine."""
    if not name.endswith(SUFFIX):
        return "float", "raw"
    return cfg.export.input, "detections" if cfg.export.nms else "raw"


def in_contract(pipe: PrePost, cfg: Config, name: str) -> PrePost:
    """``pipe`` fed and read as engine ``name``'s contract (:func:`contract_of`)."""
    input_type, contract = contract_of(cfg, name)
    return replace(pipe, input=input_type, contract=contract)


def _spec(cfg: Config, run_dir: Path):
    from edgefpn.data.preprocess import normalise_coefficients
    from edgefpn.e2e.graft import E2ESpec

    arch = recorded_arch(cfg, run_dir)
    return E2ESpec(
        arch=arch,
        uint8=cfg.export.input == "uint8",
        nms=bool(cfg.export.nms),
        params=postprocess_params(cfg, arch),
        input_size=cfg.model.input_size,
        coef=normalise_coefficients(cfg.model.mean, cfg.model.std),
    )


def _chash(cfg: Config, key: StageKey) -> str:
    from edgefpn.e2e.graph import GRAPH_VERSION

    return key.config_hash(cfg, graph_version=GRAPH_VERSION)


def _source(run_dir: Path, rel: str) -> tuple[Path, Record] | None:
    path = run_dir / rel
    made = record(path)
    return (path, made) if path.exists() and made is not None else None


def make_onnx(cfg: Config, run_dir: Path, src_rel: str, *, force: bool = False) -> Artifact | None:
    """``ONNX_TWINS[src_rel]`` grafted from ``src_rel`` (None when that file or its manifest is missing)."""
    import onnx

    from edgefpn.e2e.graft import graft_onnx
    from edgefpn.lint import errors, lint_onnx
    from edgefpn.onnx_guard import save_onnx

    src = _source(run_dir, src_rel)
    if src is None:
        return None
    path, made = src
    out = run_dir / ONNX_TWINS[src_rel]
    chash, inputs = _chash(cfg, E2E_ONNX), {"source": str(made.sha256)}
    if art := E2E_ONNX.fresh(out, config_hash=chash, inputs=inputs, force=force):
        log(f"[e2e] up to date: {out}")
        return art
    spec = _spec(cfg, run_dir)
    try:
        model = graft_onnx(onnx.load(str(path)), spec)
    except ValueError as exc:
        from edgefpn.errors import ExportError

        raise ExportError(f"{out}: {exc}") from exc
    findings = lint_onnx(model)
    with atomic_output(out) as tmp:
        save_onnx(model, tmp)
        onnx.checker.check_model(str(tmp), full_check=True)
    log(
        f"[e2e] {out.name}: {src_rel} + {' + '.join(_parts(spec))}"
        + (f" (TensorRT lint: {len(errors(findings))} error(s))" if errors(findings) else "")
    )
    return E2E_ONNX.record(
        out,
        config_hash=chash,
        inputs=inputs,
        extra=_extra(src_rel, made.precision or "fp32", spec, lint=[f.to_dict() for f in findings]),
    )


def make_openvino(
    cfg: Config, run_dir: Path, precision: str, network_onnx_rel: str, *, force: bool = False
) -> Artifact | None:
    """``openvino/<precision>-e2e/`` grafted onto the IR ``openvino/<precision>/`` (None when absent).

    ``network_onnx_rel`` is an ONNX of the same network (its I/O shapes size the head and tail).
    """
    import shutil

    import onnx

    from edgefpn.backends.openvino import IR_NAME
    from edgefpn.e2e.graft import graft_openvino

    src_rel = f"openvino/{precision}"
    src = _source(run_dir, src_rel)
    if src is None or not (run_dir / network_onnx_rel).exists():
        return None
    path, made = src
    out = run_dir / f"{src_rel}{SUFFIX}"
    chash, inputs = _chash(cfg, E2E_OPENVINO), {"source": str(made.sha256)}
    if art := E2E_OPENVINO.fresh(out, config_hash=chash, inputs=inputs, force=force):
        log(f"[e2e] up to date: {out}")
        return art
    spec = _spec(cfg, run_dir)
    network = onnx.load(str(run_dir / network_onnx_rel), load_external_data=False)
    with atomic_output(out) as tmp:
        shutil.rmtree(tmp, ignore_errors=True)
        outputs = graft_openvino(path / IR_NAME, network, spec, tmp / IR_NAME)
    log(f"[e2e] openvino-{precision}{SUFFIX}: {src_rel} + {' + '.join(_parts(spec))}")
    return E2E_OPENVINO.record(
        out,
        config_hash=chash,
        inputs=inputs,
        extra=_extra(
            src_rel,
            precision,
            spec,
            target="openvino",
            outputs=outputs,
            files=[IR_NAME, Path(IR_NAME).with_suffix(".bin").name],
        ),
    )


def _extra(src_rel: str, precision: str, spec, *, target: str | None = None, **more: Any) -> dict[str, Any]:
    """The manifest fields of an e2e file grafted onto ``src_rel`` (key order as before the helper)."""
    extra: dict[str, Any] = {"e2e_source": src_rel, "precision": precision}
    if target is not None:
        extra["target"] = target
    return {**extra, **_describe(spec), **more}


def _parts(spec) -> list[str]:
    return [p for p, on in (("uint8 input", spec.uint8), ("decode + NMS", spec.nms)) if on]


def _describe(spec) -> dict[str, Any]:
    from edgefpn.e2e.graph import DET_OUTPUTS, THRESH_INPUT, U8_INPUTS

    d = spec.describe()
    return {
        "e2e": d,
        "contract": "detections" if spec.nms else "raw",
        "input_type": d["input"],
        "input_names": [*(U8_INPUTS if spec.uint8 else ["images"]), *([THRESH_INPUT] if spec.nms else [])],
        "output_names": list(DET_OUTPUTS) if spec.nms else None,
    }

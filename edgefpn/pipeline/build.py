"""Stage `build`: OpenVINO IR and TensorRT engines from the exported (and quantized) ONNX.

Engines, each with a manifest recording the source ONNX's sha256, precision, input spec, backend
version, build settings and the TensorRT lint findings of its source:

* ``openvino/{fp32,fp16,int8}/``: IR folders (``model.xml`` + ``model.bin``). fp32 and fp16 are
  converted from ``model.onnx`` (fp16 = fp16 weight storage); int8 is the quantize stage's NNCF IR
  when it made one, else ``model.int8.onnx`` (Q/DQ) converted as-is.
* ``tensorrt/{fp16,int8}/model.engine``: plain TensorRT engines (fp16 from ``model.onnx``, int8 from
  the Q/DQ ``model.int8.onnx``), beside a ``trtexec.sh`` that builds the same engine on the target
  device (a Jetson) from the same ONNX.

Targets the user names (``--target``) must be available, else a one-line error and nothing is
written. Targets that come from the config (``build.targets``) are built where possible; the rest are
skipped with the reason logged and recorded in ``build.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefpn.artifacts import (
    Artifact,
    atomic_output,
    atomic_write_text,
    read_manifest,
    require,
    up_to_date,
    write_json,
    write_manifest,
)
from edgefpn.config import PRECISIONS, Config, config_hash
from edgefpn.errors import BackendUnavailable, ConfigError, ModelFileError
from edgefpn.lint import Finding, errors, lint_onnx
from edgefpn.pipeline import e2e as e2e_stage
from edgefpn.pipeline import export as export_stage
from edgefpn.pipeline.common import log

TARGETS = ("openvino", "tensorrt")
SUMMARY = "build.json"
TRTEXEC_SCRIPT = "trtexec.sh"
# OpenVINO on CPU computes in f32 for every engine (see edgefpn.backends.openvino); recorded per engine.
OPENVINO_INFERENCE_PRECISION = "f32"


def engine_path(run_dir: Path, target: str, precision: str) -> Path:
    """Where the ``target`` engine at ``precision`` lives (check.ENGINE_FILES names the same paths)."""
    if target == "openvino":
        return run_dir / "openvino" / precision
    return run_dir / "tensorrt" / precision / "model.engine"


@dataclass(frozen=True)
class _Source:
    """An ONNX the build reads: its file, sha256 (from its manifest), input spec and lint findings."""

    path: Path
    sha256: str
    input: dict[str, Any]
    lint: list[Finding]

    def describe(self) -> dict[str, Any]:
        return {"path": self.path.name, "sha256": self.sha256}


def run(cfg: Config, run_dir: Path, *, targets: Sequence[str] | None = None,
        precisions: Sequence[str] | None = None, force: bool = False, progress: bool = True) -> list[Artifact]:
    """Build the requested engines (default: ``build.targets`` x ``build.precisions``); return them."""
    explicit = bool(targets)
    targets = _checked(targets or cfg.build.targets, TARGETS, "target")
    precisions = _checked(precisions or cfg.build.precisions, PRECISIONS, "precision")
    unavailable = {t: reason for t in targets if (reason := _unavailable(t))}
    if explicit and unavailable:  # before anything is written
        target, reason = next(iter(unavailable.items()))
        raise BackendUnavailable(f"{target}: {reason}")

    onnx_art = export_stage.run(cfg, run_dir, progress=progress)
    base = _source(onnx_art)
    sources: dict[str, _Source | None] = {"fp32": base, "fp16": base}
    int8_reason = None
    if "int8" in precisions:
        sources["int8"], int8_reason = _int8_source(cfg, run_dir, progress=progress)

    built: list[tuple[str, Artifact]] = []
    skipped: list[dict[str, str]] = []
    scripts: list[str] = []
    for target in targets:
        for precision in precisions:
            name = f"{target}-{precision}"
            reason = _skip_reason(target, precision, sources.get(precision), int8_reason)
            if reason is None and target == "tensorrt":
                script = _write_trtexec(run_dir, precision, sources[precision], cfg)
                if script is not None:
                    scripts.append(str(script.relative_to(run_dir)))
            reason = reason or unavailable.get(target)
            if reason is not None:
                log(f"[build] skipped {name}: {reason}")
                skipped.append({"name": name, "reason": reason})
                continue
            src = sources[precision]
            assert src is not None  # _skip_reason returned None
            art = (_openvino(run_dir, precision, src, base, nncf=cfg.quantize.openvino, force=force)
                   if target == "openvino" else _tensorrt(cfg, run_dir, precision, src, force=force))
            built.append((name, art))

    if e2e_stage.enabled(cfg):
        built += _e2e(cfg, run_dir, built, sources, force=force)

    write_json(run_dir / SUMMARY, {
        "schema": "edgefpn.build/1",
        "targets": list(targets), "precisions": list(precisions),
        "engines": [{"name": name, "path": str(a.path.relative_to(run_dir)), "sha256": a.sha256}
                    for name, a in built],
        "skipped": skipped,
        "trtexec_scripts": scripts,
        "lint": {s.path.name: _lint_summary(s.lint) for s in sources.values() if s is not None},
    })
    return [a for _, a in built]


def _checked(values: Sequence[str], valid: Sequence[str], what: str) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(values))
    for v in out:
        if v not in valid:
            raise ConfigError(f"build: unknown {what} {v!r}; valid: {', '.join(valid)}")
    return out


def unavailable_reason(target: str) -> str | None:
    """Why ``target`` (openvino, tensorrt) cannot be built on this machine, or None."""
    return _unavailable(target)


def _unavailable(target: str) -> str | None:
    if target == "openvino":
        from edgefpn.backends.openvino import OpenVinoRunner

        return None if OpenVinoRunner.is_available() else \
            "the `openvino` Python package is not installed; install it with `pip install 'edgefpn[openvino]'`"
    from edgefpn.backends.tensorrt import unavailable_reason

    return unavailable_reason()


def _skip_reason(target: str, precision: str, src: _Source | None, int8_reason: str | None) -> str | None:
    from edgefpn.backends import CAPABILITIES

    if precision not in CAPABILITIES[target].precisions:
        return f"{target} engines are built at {' and '.join(CAPABILITIES[target].precisions)} only"
    if src is None:
        return f"no int8 model: {int8_reason}"
    return None


# ----------------------------------------------------------------------------------------------
# sources


def _source(art: Artifact) -> _Source:
    import onnx

    model = onnx.load(str(art.path))
    findings = lint_onnx(model)
    inps = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    specs = [{"name": i.name, "shape": [d.dim_value for d in i.type.tensor_type.shape.dim],
              "dtype": onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name} for i in inps]
    # the image input first; an e2e graph with uint8 input also takes valid_hw (edgefpn.e2e)
    spec = specs[0] if len(specs) == 1 else {**specs[0], "inputs": specs}
    n_err = len(errors(findings))
    if findings:
        log(f"[build] TensorRT lint of {art.path.name}: {n_err} error(s), {len(findings) - n_err} warning(s)"
            + f"; first: {findings[0]}")
    return _Source(art.path, art.sha256, spec, findings)


def _int8_source(cfg: Config, run_dir: Path, *, progress: bool) -> tuple[_Source | None, str | None]:
    """The Q/DQ ``model.int8.onnx`` from the quantize stage (brought up to date), or why there is none."""
    if not cfg.quantize.enabled:
        return None, "quantize.enabled is false"
    try:
        from edgefpn.pipeline import quantize as quantize_stage
    except ModuleNotFoundError as exc:
        if exc.name != "edgefpn.pipeline.quantize":
            raise
        return None, "this edgefpn has no quantize stage"
    art = quantize_stage.run(cfg, run_dir, progress=progress)
    if art is None:
        return None, "the quantize stage made no model.int8.onnx"
    return _source(art), None


def _lint_summary(findings: list[Finding]) -> dict[str, Any]:
    errs = errors(findings)
    return {"errors": len(errs), "warnings": len(findings) - len(errs), "findings": [f.to_dict() for f in findings]}


def _extra(target: str, precision: str, src: _Source, backend_version: str, settings: dict[str, Any],
           **more: Any) -> dict[str, Any]:
    return {"target": target, "precision": precision, "source": src.describe(), "input": src.input,
            "backend_version": backend_version, "settings": settings,
            "lint": [f.to_dict() for f in src.lint], **more}


# ----------------------------------------------------------------------------------------------
# OpenVINO


def _openvino(run_dir: Path, precision: str, src: _Source, base: _Source, *, nncf: bool, force: bool) -> Artifact:
    """The OpenVINO engine at ``precision``. For int8 that is the quantize stage's NNCF IR, which
    shares ``openvino/int8`` with this stage's own conversion: taken only while ``quantize.openvino``
    is on and it was made from the current ``model.onnx`` and ``model.int8.onnx`` (else converted over)."""
    from edgefpn.backends.openvino import IR_NAME, onnx_to_openvino, openvino_version

    out = engine_path(run_dir, "openvino", precision)
    if precision == "int8":
        manifest = read_manifest(out)
        if manifest is not None and manifest.get("stage") == "quantize":
            made_from = manifest.get("inputs") or {}
            if nncf and made_from.get("model") == base.sha256 and made_from.get("int8_qdq") == src.sha256:
                art = require(out, "OpenVINO INT8 IR from the quantize stage")
                log(f"[build] openvino-int8: the quantize stage's NNCF IR {out}")
                return art
            why = ("quantize.openvino is off" if not nncf
                   else f"made from another {base.path.name} / {src.path.name} than the current ones")
            log(f"[build] openvino-int8: the NNCF IR in {out} is stale ({why}); converting {src.path.name}")
    settings = {"compress_to_fp16": precision == "fp16", "device": "CPU",
                "inference_precision_hint": OPENVINO_INFERENCE_PRECISION}
    version = openvino_version()
    chash = config_hash({"target": "openvino", "precision": precision, "openvino": version, **settings})
    inputs = {"onnx": src.sha256}
    if not force and (art := up_to_date(out, config_hash=chash, inputs=inputs)):
        log(f"[build] up to date: {out}")
        return art
    log(f"[build] openvino-{precision}: converting {src.path.name} (compress_to_fp16={settings['compress_to_fp16']})")
    with atomic_output(out) as tmp:
        outputs = onnx_to_openvino(src.path, tmp / IR_NAME, compress_to_fp16=bool(settings["compress_to_fp16"]))
    return write_manifest(out, stage="build", config_hash=chash, inputs=inputs,
                          extra=_extra("openvino", precision, src, version, settings, outputs=outputs,
                                       files=[IR_NAME, Path(IR_NAME).with_suffix(".bin").name]))


# ----------------------------------------------------------------------------------------------
# TensorRT


def _e2e(cfg: Config, run_dir: Path, built: list[tuple[str, Artifact]], sources: dict[str, _Source | None], *,
         force: bool) -> list[tuple[str, Artifact]]:
    """The ``-e2e`` twins (edgefpn.pipeline.e2e) of the ONNX models and of the engines just built."""
    out: list[tuple[str, Artifact]] = []
    onnx_twins = {}
    for precision, rel in (("fp32", "model.onnx"), ("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx"),
                           ("int8-ort", "model.int8.ort.onnx")):  # the last for onnxruntime-int8-e2e only
        if (art := e2e_stage.make_onnx(cfg, run_dir, rel, force=force)) is not None:
            onnx_twins[precision] = art
    for name, _art in built:
        target, precision = name.split("-", 1)
        if target == "openvino":
            art = e2e_stage.make_openvino(cfg, run_dir, precision, export_stage.ARTIFACT, force=force)
        else:  # TensorRT builds the e2e ONNX of the same precision (fp16 engines from the fp32 graph)
            twin = onnx_twins.get("int8" if precision == "int8" else "fp32")
            art = None if twin is None else _tensorrt(
                cfg, run_dir, precision, _source(twin), force=force,
                out=engine_path(run_dir, "tensorrt", precision).parent.with_name(f"{precision}-e2e") / "model.engine")
        if art is not None:
            out.append((f"{name}-e2e", art))
    return out


def _tensorrt(cfg: Config, run_dir: Path, precision: str, src: _Source, *, force: bool,
              out: Path | None = None) -> Artifact:
    from edgefpn.backends import tensorrt as trt_backend

    errs = errors(src.lint)
    if errs:
        raise ModelFileError(f"{src.path}: {len(errs)} TensorRT lint error(s), first: {errs[0]} "
                             f"(all: edgefpn trt-lint {src.path})")
    settings = cfg.build.tensorrt
    device = trt_backend.cuda_device()
    version = trt_backend.tensorrt_version()
    if device is None or version is None:
        raise BackendUnavailable(f"tensorrt: {trt_backend.unavailable_reason() or 'not usable here'}")
    out = out or engine_path(run_dir, "tensorrt", precision)
    chash = config_hash(settings, {"precision": precision, "device": device.to_dict(), "tensorrt": version})
    inputs = {"onnx": src.sha256}
    if not force and (art := up_to_date(out, config_hash=chash, inputs=inputs)):
        log(f"[build] up to date: {out}")
        return art
    with atomic_output(out) as tmp:
        result = trt_backend.build_engine(src.path, tmp, precision=precision, settings=settings,
                                          cache_dir=run_dir / "tensorrt", log=log)
    info = result.manifest(settings)
    return write_manifest(out, stage="build", config_hash=chash, inputs=inputs, extra=_extra(
        "tensorrt", precision, src, result.version, {k: info[k] for k in (
            "workspace_mb", "builder_optimization_level", "dla_core", "hardware_compatibility",
            "version_compatible", "timing_cache")},
        tensorrt=info, device=result.device.to_dict(), build_flags=result.flags))


def _write_trtexec(run_dir: Path, precision: str, src: _Source | None, cfg: Config) -> Path | None:
    """``tensorrt/<precision>/trtexec.sh``: the same build with trtexec, for on-device builds."""
    from edgefpn.backends.tensorrt import trtexec_command, trtexec_script

    if src is None or errors(src.lint):
        return None  # the build would fail; the lint findings are in build.json
    script = engine_path(run_dir, "tensorrt", precision).parent / TRTEXEC_SCRIPT
    onnx_rel = os.path.relpath(src.path, script.parent)
    cmd = trtexec_command(onnx_rel, "model.engine", precision=precision, settings=cfg.build.tensorrt,
                          timing_cache="../timing-trtexec.cache" if cfg.build.tensorrt.timing_cache else None)
    text = trtexec_script(cmd)
    if not script.is_file() or script.read_text(encoding="utf-8") != text:
        atomic_write_text(script, text)
        script.chmod(0o755)
    return script

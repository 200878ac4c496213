"""Stage `build`: the engines of every ``build.targets`` backend (its ``Backend.build``, edgefpn.backends).

Engines, each with a manifest recording the source ONNX's sha256, precision, input spec, backend
version, build settings and the TensorRT lint findings of its source:

* ``openvino/{fp32,fp16,int8}/``: IR folders (``model.xml`` + ``model.bin``). fp32 and fp16 are
  converted from ``model.onnx`` (fp16 = fp16 weight storage); int8 is the quantize stage's NNCF IR
  when it made one, else ``model.int8.onnx`` (Q/DQ) converted as-is.
* ``tensorrt/{fp16,int8}/model.engine``: plain TensorRT engines (fp16 from ``model.onnx``, int8 from
  the Q/DQ ``model.int8.onnx``), beside a ``trtexec.sh`` that builds the same engine on the target
  device (a Jetson) from the same ONNX.
* ``executorch/fp32/model.pte`` (opt in): an ExecuTorch program (XNNPACK delegate) from ``model.pt``.

Targets the user names (``--target``) must be available, else a one-line error and nothing is
written. Targets that come from the config (``build.targets``) are built where possible; the rest are
skipped with the reason logged and recorded in ``build.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgefpn.artifacts import Artifact, write_json
from edgefpn.backend_names import BUILD_TARGETS
from edgefpn.backends import backend
from edgefpn.backends.building import BuildSource
from edgefpn.config import PRECISIONS, Config
from edgefpn.errors import BackendUnavailable, ConfigError
from edgefpn.lint import Finding, errors, lint_onnx
from edgefpn.pipeline import e2e as e2e_stage
from edgefpn.pipeline import export as export_stage
from edgefpn.pipeline.common import log

TARGETS = BUILD_TARGETS  # every backend whose record has a build (edgefpn.backends.BACKENDS)
SUMMARY = "build.json"
_Source = BuildSource


def engine_path(run_dir: Path, target: str, precision: str) -> Path:
    """Where the ``target`` engine at ``precision`` lives (its record's ``engine_path``)."""
    return backend(target).engine_path(run_dir, precision)


def run(
    cfg: Config,
    run_dir: Path,
    *,
    targets: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> list[Artifact]:
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
        record = backend(target)
        if record.build is None:  # TARGETS (BUILD_TARGETS) lists only the records that have a build
            raise RuntimeError(f"{target}: its backend record has no build")
        for precision in precisions:
            name = f"{target}-{precision}"
            reason = _skip_reason(target, precision, sources.get(precision), int8_reason)
            if reason is None and record.side_files is not None:  # e.g. trtexec.sh, for an on-device build
                side = record.side_files(cfg, run_dir, precision, sources[precision])
                if side is not None:
                    scripts.append(str(side.relative_to(run_dir)))
            reason = reason or unavailable.get(target)
            if reason is not None:
                log(f"[build] skipped {name}: {reason}")
                skipped.append({"name": name, "reason": reason})
                continue
            src = sources[precision]
            if src is None:  # _skip_reason returned None only with a source
                raise RuntimeError(f"{name}: no source model")
            built.append((name, record.build(cfg, run_dir, precision, src, base=base, force=force)))

    if e2e_stage.enabled(cfg):
        built += _e2e(cfg, run_dir, built, sources, force=force)

    write_json(
        run_dir / SUMMARY,
        {
            "schema": "edgefpn.build/1",
            "targets": list(targets),
            "precisions": list(precisions),
            "engines": [
                {"name": name, "path": str(a.path.relative_to(run_dir)), "sha256": a.sha256}
                for name, a in built
            ],
            "skipped": skipped,
            "trtexec_scripts": scripts,
            "lint": {s.path.name: _lint_summary(s.lint) for s in sources.values() if s is not None},
        },
    )
    return [a for _, a in built]


def _checked(values: Sequence[str], valid: Sequence[str], what: str) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(values))
    for v in out:
        if v not in valid:
            raise ConfigError(f"build: unknown {what} {v!r}; valid: {', '.join(valid)}")
    return out


def unavailable_reason(target: str) -> str | None:
    """Why ``target`` cannot be built on this machine, or None."""
    return _unavailable(target)


def _unavailable(target: str) -> str | None:
    return backend(target).unavailable()


def _skip_reason(target: str, precision: str, src: _Source | None, int8_reason: str | None) -> str | None:
    record = backend(target)
    if precision not in record.precisions:
        return f"{target} engines are built at {' and '.join(record.precisions)} only"
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
    specs = [
        {
            "name": i.name,
            "shape": [d.dim_value for d in i.type.tensor_type.shape.dim],
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name,
        }
        for i in inps
    ]
    # the image input first; an e2e graph with uint8 input also takes valid_hw (edgefpn.e2e)
    spec = specs[0] if len(specs) == 1 else {**specs[0], "inputs": specs}
    n_err = len(errors(findings))
    if findings:
        log(
            f"[build] TensorRT lint of {art.path.name}: {n_err} error(s), {len(findings) - n_err} warning(s)"
            + f"; first: {findings[0]}"
        )
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
    return {
        "errors": len(errs),
        "warnings": len(findings) - len(errs),
        "findings": [f.to_dict() for f in findings],
    }


def _e2e(
    cfg: Config,
    run_dir: Path,
    built: list[tuple[str, Artifact]],
    sources: dict[str, _Source | None],
    *,
    force: bool,
) -> list[tuple[str, Artifact]]:
    """The ``-e2e`` twins (edgefpn.pipeline.e2e) of the ONNX models and of the engines just built."""
    out: list[tuple[str, Artifact]] = []
    onnx_twins = {}
    for precision, rel in (
        ("fp32", "model.onnx"),
        ("fp16", "model.fp16.onnx"),
        ("int8", "model.int8.onnx"),
        ("int8-ort", "model.int8.ort.onnx"),
    ):  # the last for onnxruntime-int8-e2e only
        if (art := e2e_stage.make_onnx(cfg, run_dir, rel, force=force)) is not None:
            onnx_twins[precision] = art
    for name, _art in built:
        target, precision = name.split("-", 1)
        make = backend(target).e2e
        art = None if make is None else make(cfg, run_dir, precision, onnx_twins, source=_source, force=force)
        if art is not None:
            out.append((f"{name}-e2e", art))
    return out

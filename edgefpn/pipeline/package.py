"""Stage `package`: the checked engines, their source ONNX and everything around them in ``bundle.tar``.

The bundle (see :mod:`edgefpn.bundle`) holds, at their run-directory paths:

* the engines that passed the check stage's gates (``model*.onnx``, ``openvino/<p>/model.{xml,bin}``,
  ``tensorrt/<p>/model.engine`` as plain engine bytes),
* the ONNX each engine came from, ``report.json`` / ``report.md`` from the check stage,
* ``pipeline.json``: class names, category ids, preprocessing (input size, mean, std, letterbox rule)
  and postprocessing (thresholds, strides, levels),
* ``manifest.json``, the last member: every file's sha256, size and role; per engine its file(s), source
  ONNX, target (backend, version, precision; for TensorRT the engine manifest's version and compute
  capability), check result and the tool versions that built it; the versions that packaged it.

The manifest has no wall-clock timestamp: packaging the same run twice gives a byte-identical tar.
(``check_report_created_unix`` is the check report's own creation time, an input, not a clock read.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgefpn import bundle
from edgefpn.artifacts import (
    Artifact,
    atomic_output,
    manifest_path,
    tool_versions,
)
from edgefpn.config import Config
from edgefpn.data.preprocess import describe_preprocessing
from edgefpn.errors import CheckFailed, ConfigError
from edgefpn.manifests import Record, model_meta, recorded_sha256
from edgefpn.manifests import record as manifest_record
from edgefpn.pipeline import check as check_stage
from edgefpn.pipeline import e2e as e2e_stage
from edgefpn.pipeline.common import log, postprocess_params
from edgefpn.pipeline.lineage import current_engines
from edgefpn.stages import PACKAGE

ARTIFACT = "bundle.tar"
PIPELINE = "pipeline.json"
_ONNX_FILES = (
    "model.onnx",
    "model.int8.onnx",
    "model.int8.ort.onnx",
    "model.fp16.onnx",
    *e2e_stage.ONNX_TWINS.values(),
)
_ENGINES = {name: (backend, precision, rel) for name, backend, precision, rel in check_stage.ENGINE_FILES}


def run(
    cfg: Config,
    run_dir: Path,
    *,
    engines: Sequence[str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> Artifact:
    """Bring check up to date, then bundle the engines that passed (default: all of them)."""
    unknown = [e for e in engines or () if e not in _ENGINES]
    if unknown:
        raise ConfigError(f"--engines: unknown engine {unknown[0]!r}; valid: {', '.join(_ENGINES)}")
    _check_requested(cfg, engines or ())  # before check (and the stages it brings up to date) runs
    try:
        check_stage.run(cfg, run_dir, progress=progress)
    except CheckFailed as exc:  # package what passed; the failures are in the report
        log(f"[package] {exc}")
    report = json.loads((run_dir / check_stage.REPORT).read_text(encoding="utf-8"))
    # as check: only engines the config makes that chain to this run's model.pt
    _, ignored = current_engines(cfg, run_dir, cfg.check.backends, check_stage.ENGINE_FILES)
    chosen = _choose(report, run_dir, engines, {e.name: e.reason for e in ignored})

    files, entries = _collect(run_dir, chosen, {n: e2e_stage.contract_of(cfg, n) for n in chosen})
    pipeline_json = json.dumps(_pipeline(cfg, run_dir), indent=2, sort_keys=True) + "\n"
    out = run_dir / ARTIFACT
    inputs = {name: e["sha256"] for name, e in files.items()}
    inputs[PIPELINE] = _sha256_text(pipeline_json)
    chash = PACKAGE.config_hash(cfg, schema=bundle.SCHEMA, engines=sorted(chosen))
    if art := PACKAGE.fresh(out, config_hash=chash, inputs=inputs, force=force):
        log(f"[package] up to date: {out}")
        return art

    with atomic_output(out) as tmp:
        tmp.parent.joinpath("src").mkdir()
        pj = tmp.parent / "src" / PIPELINE
        pj.write_text(pipeline_json, encoding="utf-8")
        files[PIPELINE] = bundle.file_entry(pj, ["pipeline"])
        sources = {name: run_dir / name for name in files if name != PIPELINE} | {PIPELINE: pj}
        report_record = manifest_record(run_dir / check_stage.REPORT)
        manifest = {
            "schema": bundle.SCHEMA,
            "files": dict(sorted(files.items())),
            "engines": entries,
            "pipeline": PIPELINE,
            "report": {
                "json": check_stage.REPORT,
                "md": "report.md",
                "check_report_created_unix": report_record.created_unix if report_record else None,
            },
            "packaged_with": tool_versions(),
        }
        bundle.write_tar(tmp, sources, manifest)
    log(f"[package] wrote {out}: {', '.join(e['name'] for e in entries)}")
    return PACKAGE.record(
        out,
        config_hash=chash,
        inputs=inputs,
        extra={"engines": [e["name"] for e in entries]},
    )


def _sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _why_not_built(cfg: Config, name: str) -> str | None:
    """Why this config, on this machine, never builds and checks engine ``name`` (None: it may)."""
    from edgefpn.backends import backend as backend_record

    backend, precision, _ = _ENGINES[name]
    if name != e2e_stage.raw_twin(name):  # an in-graph twin: made where its raw twin is, when asked for
        if not e2e_stage.enabled(cfg):
            return "export.nms is false and export.input is float (no end-to-end engines)"
        return _why_not_built(cfg, e2e_stage.raw_twin(name))
    if backend not in cfg.check.backends:
        return f"check.backends does not include {backend}"
    record = backend_record(backend)
    if record.build is None:  # made by the export / quantize stages: the record says when
        return record.not_made(cfg, precision) if record.not_made is not None else None
    # int8 engines come from the quantize stage's models
    if precision == "int8" and not cfg.quantize.enabled:
        return "quantize.enabled is false"
    if backend not in cfg.build.targets:
        return f"build.targets does not include {backend}"
    if precision not in cfg.build.precisions:
        return f"build.precisions does not include {precision}"
    if precision not in record.precisions:
        return f"{backend} engines are built at {' and '.join(record.precisions)} only"
    return record.unavailable()


def _check_requested(cfg: Config, requested: Sequence[str]) -> None:
    """Refuse (exit 2) an ``--engines`` name that this config never builds here, naming what it does build."""
    for name in requested:
        reason = _why_not_built(cfg, name)
        if reason is not None:
            possible = [n for n in _ENGINES if _why_not_built(cfg, n) is None]
            raise ConfigError(
                f"--engines {name}: never built with these settings ({reason}); available: "
                f"{', '.join(possible) or 'none'}"
            )


def _choose(
    report: dict[str, Any], run_dir: Path, requested: Sequence[str] | None, ignored: dict[str, str]
) -> list[str]:
    passed = {e["name"]: e for e in report["engines"] if e["name"] in _ENGINES and e["name"] not in ignored}
    where = run_dir / check_stage.REPORT
    if requested:
        for name in requested:
            if name in ignored:
                raise ConfigError(
                    f"{run_dir / _ENGINES[name][2]}: --engines {name}: not packaged, {ignored[name]}"
                )
            if name not in passed:  # a bad request, not a failed gate (exit 2, not 4)
                raise ConfigError(
                    f"--engines {name}: not built or not checked in this run ({where} has "
                    f"{', '.join(passed) or 'no engines'})"
                )
            if not passed[name]["gates"]["passed"]:
                raise CheckFailed(
                    f"{where}: engine {name} failed its gates: {'; '.join(passed[name]['gates']['failed'])}"
                )
        return list(dict.fromkeys(requested))
    chosen = [name for name, e in passed.items() if e["gates"]["passed"]]
    if not chosen:
        raise CheckFailed(f"{where}: no engine passed its gates; nothing to package")
    return chosen


def _engine_files(run_dir: Path, rel: str) -> list[str]:
    path = run_dir / rel
    if path.is_dir():
        return sorted(p.relative_to(run_dir).as_posix() for p in path.rglob("*") if p.is_file())
    return [rel]


def _source_onnx(run_dir: Path, rel: str, made: Record) -> str:
    """The ONNX an engine came from: named by its build manifest, else matched by input sha256."""
    if made.source_path in _ONNX_FILES:
        return str(made.source_path)
    if made.stage == "e2e":  # an e2e ONNX is its own source; an e2e IR's is the e2e ONNX
        return rel if rel in _ONNX_FILES else e2e_stage.ONNX_TWINS["model.onnx"]
    wanted = set(made.inputs.values())
    for name in _ONNX_FILES:
        if (sha := recorded_sha256(run_dir / name)) is not None and sha in wanted:
            return name
    return rel  # model.onnx is its own source


def _target(backend: str, precision: str, made: Record) -> dict[str, Any]:
    """The bundle's ``target`` of one engine: backend, precision, version, and its record's own fields."""
    from edgefpn.backends import backend as backend_record

    target: dict[str, Any] = {
        "backend": backend,
        "precision": precision,
        "version": made.backend_version or made.versions.get(backend),
    }
    # the backend reads its own fields of its build manifest (TensorRT: the version it was built with)
    return target | backend_record(backend).bundle_target(precision, made.fields)


def _collect(
    run_dir: Path, chosen: list[str], contracts: dict[str, tuple[str, str]]
) -> tuple[dict[str, dict], list[dict[str, Any]]]:
    roles: dict[str, set[str]] = {check_stage.REPORT: {"report"}, "report.md": {"report"}}
    entries = []
    for name in chosen:
        backend, precision, rel = _ENGINES[name]
        made = manifest_record(run_dir / rel)
        if made is None or not made.intact():
            raise CheckFailed(f"{run_dir / rel}: does not match its manifest; rerun build and check")
        names = _engine_files(run_dir, rel)
        source = _source_onnx(run_dir, rel, made)
        for n in names:
            roles.setdefault(n, set()).add("engine")
        # the engine's own sidecar manifest travels with it: the TensorRT runner reads it before loading
        roles.setdefault(manifest_path(Path(rel)).as_posix(), set()).add("engine-manifest")
        roles.setdefault(source, set()).add("source")
        entries.append(
            {
                "name": name,
                "backend": backend,
                "precision": precision,
                "path": rel,
                "files": names,
                "manifest": manifest_path(Path(rel)).as_posix(),
                "source": source,
                "target": _target(backend, precision, made),
                "built_with": dict(made.versions),
                "stage": made.stage,
                # what the engine is fed and returns (README "Engine contracts"); the runtime follows it
                "input": contracts[name][0],
                "contract": contracts[name][1],
            }
        )
    files = {n: bundle.file_entry(run_dir / n, sorted(r)) for n, r in sorted(roles.items())}
    return files, entries


def _pipeline(cfg: Config, run_dir: Path) -> dict[str, Any]:
    meta = model_meta(run_dir)
    num_classes = meta.num_classes
    arch = meta.arch or cfg.model.arch
    pp = postprocess_params(cfg, arch, deploy=True)  # the device keeps what an application keeps
    m = cfg.model
    preprocessing = describe_preprocessing()
    return {
        "arch": arch,
        "classes": {
            "num_classes": num_classes,
            "names": meta.class_names or [str(i) for i in range(num_classes)],
            "category_ids": meta.category_ids or list(range(num_classes)),
        },
        # generated from the code that preprocesses (one source of truth), never written by hand
        "preprocess": {
            "input_name": "images",
            "input_size": list(m.input_size),
            "mean": list(m.mean),
            "std": list(m.std),
            "letterbox": preprocessing["text"],
            "rule": {k: v for k, v in preprocessing.items() if k != "text"},
        },
        "postprocess": {
            "score_thresh": pp.score_thresh,
            "nms_thresh": pp.nms_thresh,
            "topk_candidates": pp.topk_candidates,
            "detections_per_img": pp.detections_per_img,
            "strides": list(pp.strides),
            "levels": list(pp.levels),
        },
    }

"""Stage `check`: every engine in the run directory against the PyTorch reference, at three depths.

One pass over the val split runs all engines on each image (memory stays flat however large the
split), comparing raw per-level tensors, decoded detections and, at the end, COCO mAP. Latency is
measured afterwards, one engine at a time, with the same thread count for all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.artifacts import (
    Artifact,
    atomic_write_text,
    backend_versions,
    sha256_path,
    write_json,
)
from edgefpn.backend_names import CHECKED
from edgefpn.backends import BACKENDS, EngineSpec, open_runner
from edgefpn.backends.base import INPUT_NAME
from edgefpn.checking.entry import engine_entry, finite, per_level_agreement
from edgefpn.checking.gates import gates, raise_on_failures
from edgefpn.checking.latency import int8_speedups, latency
from edgefpn.config import Config, config_hash, to_dict
from edgefpn.data.preprocess import load_image
from edgefpn.manifests import check_failures, record
from edgefpn.metrics.coco import coco_map, detections_to_coco
from edgefpn.metrics.detections import DetectionAgreement
from edgefpn.metrics.tensors import tensor_agreement
from edgefpn.pipeline import e2e as e2e_stage
from edgefpn.pipeline import export as export_stage
from edgefpn.pipeline import train as train_stage
from edgefpn.pipeline.common import log, make_prepost, recorded_arch
from edgefpn.pipeline.data import require_annotations
from edgefpn.pipeline.lineage import current_engines
from edgefpn.postprocess import decoder_for
from edgefpn.report.check_html import render_html
from edgefpn.report.check_md import render_markdown, system_info, with_compute
from edgefpn.report.gallery import Gallery
from edgefpn.stages import CHECK

REPORT = "report.json"
REFERENCE = EngineSpec("torch-fp32", "torch", "fp32", Path(train_stage.ARTIFACT))

# Engines the check stage looks for, in report order: (name, backend, precision, file in run dir): every
# checked backend's engines (its record's engine_path per precision), then the end-to-end twins
# (export.nms / export.input=uint8), after the raw engines they are checked against.
ENGINE_FILES: tuple[tuple[str, str, str, str], ...] = (
    *(row for name in CHECKED for row in BACKENDS[name].engines(Path("."))),
    *e2e_stage.ENGINE_FILES,
)


def discover_engines(run_dir: Path, backends: Sequence[str]) -> list[EngineSpec]:
    """Complete engines (file + manifest) present in ``run_dir`` for the requested backends."""
    found = []
    for name, backend, precision, rel in ENGINE_FILES:
        path = run_dir / rel
        if backend in backends and path.exists() and record(path) is not None:
            found.append(EngineSpec(name, backend, precision, path))
    return found


def run(cfg: Config, run_dir: Path, *, force: bool = False, progress: bool = True) -> Artifact:
    from edgefpn.pipeline import build as build_stage
    from edgefpn.pipeline import data as data_stage

    data = data_stage.run(cfg, progress=progress)
    val = data.split(cfg.data.val_split)  # refused before anything is built when there is nothing to measure
    require_annotations(val, _records(cfg, val), what="check's mAP gate")
    # As make would: every engine is brought up to date first (build brings export and quantize),
    # so an engine left from an older model is rebuilt, never compared against a newer reference.
    build_stage.run(cfg, run_dir, progress=progress)

    reference = EngineSpec(REFERENCE.name, REFERENCE.backend, REFERENCE.precision, run_dir / REFERENCE.path)
    engines, ignored = current_engines(cfg, run_dir, cfg.check.backends, ENGINE_FILES)
    for e in ignored:  # engines a target, precision or model ago: on disk, but not this run's
        log(f"[check] ignored {e.name} ({e.path}): {e.reason}")
    out = run_dir / REPORT
    inputs = {e.name: sha256_path(e.path) for e in [reference, *engines]}
    inputs["val_annotations"] = data.annotation_hashes[cfg.data.val_split]
    inputs["val_images"] = data.images_hash(cfg.data.val_split)
    inputs["ignored_engines"] = config_hash([e.to_dict() for e in ignored])
    chash = CHECK.config_hash(cfg, backend_versions=backend_versions())
    pages = CHECK.side_paths(out)  # report.md and report.html, written beside report.json
    if art := CHECK.fresh(out, config_hash=chash, inputs=inputs, force=force):
        log(f"[check] up to date: {out}")
        raise_on_failures(check_failures(art), out)
        return art

    report = evaluate(cfg, data, reference, engines, progress=progress, arch=recorded_arch(cfg, run_dir))
    report["ignored_engines"] = [e.to_dict() for e in ignored]
    report = with_compute(report, run_dir / export_stage.ARTIFACT, cfg.run.threads)
    write_json(out, report)
    md, html = pages
    atomic_write_text(md, render_markdown(report))
    atomic_write_text(html, render_html(report))
    failures = [f"{e['name']}: {g}" for e in report["engines"] for g in e["gates"]["failed"]]
    art = CHECK.record(out, config_hash=chash, inputs=inputs, extra={"failures": failures})
    log(f"[check] wrote {out}, {md} and report.html")
    raise_on_failures(failures, out)
    return art


def evaluate(
    cfg: Config,
    data,
    reference: EngineSpec,
    engines: list[EngineSpec],
    *,
    progress: bool = True,
    arch: str | None = None,
) -> dict[str, Any]:
    """Run the reference and ``engines`` over the val split; return the report dict.

    ``arch`` picks the decoder (the arch recorded with the reference model; ``cfg.model.arch`` if None).
    """
    from tqdm import tqdm

    pipe = make_prepost(cfg, arch=arch)
    deploy_pipe = make_prepost(cfg, arch=arch, deploy=True)  # end-to-end latency: what a device runs
    # each engine's own contract: what it is fed and what it returns (raw engines: float in, raw out)
    pipes = {s.name: e2e_stage.in_contract(pipe, cfg, s.name) for s in [reference, *engines]}
    twins = {s.name: e2e_stage.raw_twin(s.name) for s in engines if s.name.endswith(e2e_stage.SUFFIX)}
    twin_agreement = {name: DetectionAgreement() for name in twins}
    split = data.split(cfg.data.val_split)
    records = _records(cfg, split)
    require_annotations(split, records, what="check's mAP gate")
    image_ids = [r.id for r in records]
    threads = cfg.run.threads

    all_specs = [reference, *engines]
    results: dict[str, list[dict]] = {s.name: [] for s in all_specs}
    tensors: dict[str, dict[str, list[dict]]] = {s.name: {} for s in engines}
    agreement = {s.name: DetectionAgreement() for s in engines}
    gallery = Gallery(deploy_pipe.post.score_thresh)
    with contextlib.ExitStack() as stack:
        runners = {s.name: stack.enter_context(open_runner(s, threads=threads)) for s in all_specs}
        bar = tqdm(
            total=len(records),
            desc=f"[check] {len(all_specs)} engines x val",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        # export.batch images per engine call (the engines' static batch; the last chunk is filled by
        # the runner); every statistic stays per image, so batch 1 and batch N report alike
        step = cfg.export.batch
        # an in-graph twin's uint8 image feed (its threshold is added per engine below)
        u8_pipe = next((replace(p, contract="raw") for p in pipes.values() if p.input == "uint8"), None)
        for start in range(0, len(records), step):
            chunk = records[start : start + step]
            # each image decoded once, whatever contracts the engines take
            images = [load_image(rec.path) for rec in chunk]
            prepared = [pipe.prepare(image) for image in images]
            batch = np.concatenate([b for b, _ in prepared])
            lbs = [lb for _, lb in prepared]
            feeds = {"float": {INPUT_NAME: batch}}
            if u8_pipe is not None:  # an in-graph twin's uint8 contract: the same images, letterboxed only
                u8 = [u8_pipe.feed_image(image)[0] for image in images]
                feeds["uint8"] = {k: np.concatenate([f[k] for f in u8]) for k in u8[0]}
            ref_out = runners[reference.name].infer({INPUT_NAME: batch})
            ref_dets = pipe.decode(ref_out, lbs)
            outs = {
                spec.name: runners[spec.name].infer(
                    {**feeds[pipes[spec.name].input], **pipes[spec.name].graph_inputs(len(chunk))}
                )
                for spec in engines
            }
            for i, rec in enumerate(chunk):
                ref_i = {name: value[i : i + 1] for name, value in ref_out.items()}
                results[reference.name].extend(detections_to_coco(ref_dets[i], rec.id, split.category_ids))
                dets = {}
                for spec in engines:
                    p = pipes[spec.name]
                    out = {name: value[i : i + 1] for name, value in outs[spec.name].items()}
                    for name, ref in ref_i.items():
                        if (
                            name in out
                        ):  # an in-graph NMS engine has no raw tensors: its twin is compared instead
                            tensors[spec.name].setdefault(name, []).append(tensor_agreement(ref, out[name]))
                    det = dets[spec.name] = p.detections(finite(out), [lbs[i]])[0]
                    agreement[spec.name].update(ref_dets[i], det)
                    gallery.update(spec.name, rec.path, rec.id, ref_dets[i], det)
                    if spec.name in twins and twins[spec.name] in dets:
                        twin_agreement[spec.name].update(dets[twins[spec.name]], det)
                    results[spec.name].extend(detections_to_coco(det, rec.id, split.category_ids))
            bar.update(len(chunk))
        bar.close()

        ann_file = data.ann_file(cfg.data.val_split)
        ref_map = coco_map(ann_file, results[reference.name], image_ids=image_ids)
        speedups = int8_speedups(runners, engines, pipe, records, cfg)
        report_engines = []
        for spec in all_specs:
            log(f"[check] latency: {spec.name}")
            timing = latency(
                runners[spec.name],
                pipes[spec.name],
                e2e_stage.in_contract(deploy_pipe, cfg, spec.name),
                records,
                cfg,
            )
            entry = engine_entry(
                spec,
                coco_map(ann_file, results[spec.name], image_ids=image_ids),
                ref_map,
                timing,
                reference.path.parent,
            )
            entry["contract"] = {"input": pipes[spec.name].input, "output": pipes[spec.name].contract}
            if spec is not reference:
                entry["levels"], entry["outputs"] = per_level_agreement(tensors[spec.name])
                entry["detections"] = agreement[spec.name].compute()
            if spec.name in speedups:
                entry["int8_speedup"] = speedups[spec.name]
            if spec.name in twins:
                found = twins[spec.name] in {s.name for s in engines}
                entry["twin"] = {
                    "engine": twins[spec.name],
                    "present": found,
                    **(twin_agreement[spec.name].compute() if found else {}),
                }
            entry["gates"] = gates(
                entry, cfg, is_reference=spec is reference, selected=decoder_for(pipe.arch).selected_outputs
            )
            report_engines.append(entry)

    return {
        "schema": "edgefpn.report/1",
        "reference": {
            k: ref_map[k] for k in ("map", "map50", "map75", "map_small", "map_medium", "map_large")
        }
        | {"per_class": ref_map["per_class"], "engine": reference.name},
        "engines": report_engines,
        "gallery": gallery.compute([s.name for s in engines]),
        "dataset": {"root": str(data.root), "split": cfg.data.val_split, "images": len(records)},
        "config": {
            "check": to_dict(cfg.check),
            "postprocess": to_dict(cfg.postprocess),
            "deploy_score_thresh": deploy_pipe.post.score_thresh,
            "input_size": list(cfg.model.input_size),
            "threads": threads,
            "batch": cfg.export.batch,
        },
        "machine": system_info(threads),
    }


def _records(cfg: Config, split) -> tuple:
    """The val images check evaluates (the first ``check.max_images``, or all)."""
    return split.images[: cfg.check.max_images] if cfg.check.max_images else split.images

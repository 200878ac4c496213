"""Stage `check`: every engine in the run directory against the PyTorch reference, at three depths.

One pass over the val split runs all engines on each image (memory stays flat however large the
split), comparing raw per-level tensors, decoded detections and, at the end, COCO mAP. Latency is
measured afterwards, one engine at a time, with the same thread count for all.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
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
from edgefpn.config import Config, config_hash, to_dict
from edgefpn.data.preprocess import load_image
from edgefpn.errors import CheckFailed
from edgefpn.inference import detect_file
from edgefpn.manifests import check_failures, record
from edgefpn.metrics.coco import coco_map, detections_to_coco
from edgefpn.metrics.detections import DetectionAgreement
from edgefpn.metrics.tensors import aggregate_agreement, tensor_agreement
from edgefpn.pipeline import e2e as e2e_stage
from edgefpn.pipeline import export as export_stage
from edgefpn.pipeline import train as train_stage
from edgefpn.pipeline.common import log, make_prepost, recorded_arch
from edgefpn.pipeline.data import require_annotations
from edgefpn.pipeline.lineage import current_engines
from edgefpn.postprocess import decoder_for, split_output_name
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

# An end-to-end engine against its raw twin (same backend, precision and network; the twin decoded by
# numpy), on the same images at postprocess.score_thresh: (min matched fraction, min mean IoU, max
# score error). FP32 holds the issue-15 floors. FP16 / INT8 networks are the twin's own, but a backend
# may fuse the grafted graph's first and last layers differently, so their scores may move by a
# rounding of the reduced precision; their mAP gate still applies in full.
E2E_AGREEMENT = {"fp32": (0.99, 0.99, 1e-4), "fp16": (0.98, 0.98, 1e-2), "int8": (0.98, 0.98, 1e-2)}


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
        _raise_on_failures(check_failures(art), out)
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
    _raise_on_failures(failures, out)
    return art


def _raise_on_failures(failures: list[str], out: Path) -> None:
    if failures:
        raise CheckFailed(f"{out}: {len(failures)} gate(s) failed: " + "; ".join(failures))


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
    pipes = {s.name: _contract(pipe, cfg, s.name) for s in [reference, *engines]}
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
        u8_pipe = next((p for p in pipes.values() if p.input == "uint8"), None)
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
            outs = {spec.name: runners[spec.name].infer(feeds[pipes[spec.name].input]) for spec in engines}
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
                    det = dets[spec.name] = p.detections(_finite(out), [lbs[i]])[0]
                    agreement[spec.name].update(ref_dets[i], det)
                    gallery.update(spec.name, rec.path, rec.id, ref_dets[i], det)
                    if spec.name in twins and twins[spec.name] in dets:
                        twin_agreement[spec.name].update(dets[twins[spec.name]], det)
                    results[spec.name].extend(detections_to_coco(det, rec.id, split.category_ids))
            bar.update(len(chunk))
        bar.close()

        ann_file = data.ann_file(cfg.data.val_split)
        ref_map = coco_map(ann_file, results[reference.name], image_ids=image_ids)
        speedups = _int8_speedups(runners, engines, pipe, records, cfg)
        report_engines = []
        for spec in all_specs:
            log(f"[check] latency: {spec.name}")
            latency = _latency(
                runners[spec.name], pipes[spec.name], _contract(deploy_pipe, cfg, spec.name), records, cfg
            )
            entry = _engine_entry(
                spec,
                coco_map(ann_file, results[spec.name], image_ids=image_ids),
                ref_map,
                latency,
                reference.path.parent,
            )
            entry["contract"] = {"input": pipes[spec.name].input, "output": pipes[spec.name].contract}
            if spec is not reference:
                entry["levels"], entry["outputs"] = _levels(tensors[spec.name])
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
            entry["gates"] = _gates(
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


def _contract(pipe, cfg: Config, name: str):
    """``pipe`` fed and read as engine ``name``'s contract (edgefpn.pipeline.e2e.contract_of)."""
    from dataclasses import replace

    input_type, contract = e2e_stage.contract_of(cfg, name)
    return replace(pipe, input=input_type, contract=contract)


def _records(cfg: Config, split) -> tuple:
    """The val images check evaluates (the first ``check.max_images``, or all)."""
    return split.images[: cfg.check.max_images] if cfg.check.max_images else split.images


def _finite(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NaN/Inf are reported by the tensor gate; keep them from crashing NMS."""
    return {k: np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) for k, v in outputs.items()}


def _levels(per_output: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Per-output agreement, and the per-level outputs (``<branch>_p<k>``) grouped by level then branch.

    Outputs that are not per level (a two-stage detector's proposals, RoI head) appear in ``outputs``
    only; the gates check them there.
    """
    outputs = {name: aggregate_agreement(stats) for name, stats in per_output.items()}
    levels: dict[str, dict[str, Any]] = {}
    for name, agg in outputs.items():
        branch, level = split_output_name(name)
        if level is not None:
            levels.setdefault(level, {})[branch] = agg
    return dict(sorted(levels.items(), key=lambda kv: int(kv[0][1:]))), outputs


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p90": round(float(np.percentile(arr, 90)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "mean": round(float(arr.mean()), 3),
        "fps": round(float(1000.0 / arr.mean()), 2),
        "samples": len(samples_ms),
    }


# Latency is taken in this many rounds, each a block of model-only calls then a block of end-to-end
# calls (per threshold): a shared machine's slow minutes then fall on every depth alike, and the
# e2e / model-only ratio compares like with like.
_LATENCY_ROUNDS = 4


def _latency(runner, pipe, deploy_pipe, records, cfg: Config) -> dict[str, Any]:
    """Model-only (one fixed input, back to back, as benchmark_app times it) and end to end (image file
    -> detections, cycling through the val images) at the deployment score threshold; end to end at
    the evaluation threshold too where the two differ. ``check.latency_iters`` samples of each."""
    c = cfg.check
    one, _ = pipe.feed_file(records[0].path)  # in the engine's contract (float or uint8 feed)
    # model-only: one full engine batch per call (export.batch copies of the image); end to end: one
    # image file per call, as a device handles a single camera (the runner fills the batch)
    feed = {k: np.repeat(v, cfg.export.batch, axis=0) for k, v in one.items()}
    for _ in range(c.warmup):
        runner.infer(feed)
    paths = [r.path for r in records]
    pipes = {"end_to_end": deploy_pipe}
    if deploy_pipe.post.score_thresh != pipe.post.score_thresh:
        pipes["end_to_end_eval"] = pipe
    model_only: list[float] = []
    e2e: dict[str, tuple[list[float], list[int]]] = {key: ([], []) for key in pipes}
    done = 0
    for r in range(_LATENCY_ROUNDS):
        n = c.latency_iters // _LATENCY_ROUNDS + (r < c.latency_iters % _LATENCY_ROUNDS)
        for _ in range(n):
            t0 = time.perf_counter()
            runner.infer(feed)
            model_only.append((time.perf_counter() - t0) * 1e3)
        for key, p in pipes.items():
            samples, found = e2e[key]
            for i in range(done, done + n):
                t0 = time.perf_counter()
                found.append(len(detect_file(runner, p, paths[i % len(paths)])))
                samples.append((time.perf_counter() - t0) * 1e3)
        done += n
    # the raw samples stay in the report for the latency-distribution plot of report.html
    result = {
        "model_only": _percentiles(model_only)
        | {"samples_ms": [round(t, 4) for t in model_only], "batch": cfg.export.batch}
    }
    for key, p in pipes.items():
        samples, found = e2e[key]
        result[key] = _percentiles(samples) | {
            "score_thresh": p.post.score_thresh,
            "detections_per_image": round(sum(found) / max(len(found), 1), 2),
        }
    return result


def _int8_speedups(
    runners, engines: list[EngineSpec], pipe, records, cfg: Config
) -> dict[str, dict[str, Any]]:
    """Each INT8 engine's model-only speed relative to the FP32 engine of its backend, where there is one.

    The rule (the ``check.min_int8_speedup`` gate): the two engines are timed in ``check.latency_iters``
    interleaved pairs on the same input, the order alternating within pairs (int8 first, then fp32 first)
    so that neither always runs right after the other; the speedup is the median over the pairs of
    fp32 time / int8 time. On a shared machine a slow moment then slows both halves of a pair, and the
    verdict is a ratio from the same moments, not of two latencies measured minutes apart.
    """
    c = cfg.check
    # raw engines only: an -e2e twin runs its raw twin's network (and may take a uint8 feed)
    engines = [s for s in engines if not s.name.endswith(e2e_stage.SUFFIX)]
    by_key = {(s.backend, s.precision): s for s in engines}
    batch, _ = pipe.prepare_file(records[0].path)
    feed = {INPUT_NAME: batch}
    out: dict[str, dict[str, Any]] = {}
    for spec in engines:
        fp32 = by_key.get((spec.backend, "fp32"))
        if spec.precision != "int8" or fp32 is None:
            continue
        log(f"[check] paired latency: {spec.name} vs {fp32.name}")
        a, b = runners[spec.name], runners[fp32.name]
        for _ in range(c.warmup):
            a.infer(feed)
            b.infer(feed)
        t_int8: list[float] = []
        t_fp32: list[float] = []
        for i in range(max(c.latency_iters, 1)):
            for runner, times in ((a, t_int8), (b, t_fp32)) if i % 2 == 0 else ((b, t_fp32), (a, t_int8)):
                t0 = time.perf_counter()
                runner.infer(feed)
                times.append((time.perf_counter() - t0) * 1e3)
        ratios = np.asarray(t_fp32) / np.asarray(t_int8)
        out[spec.name] = {
            "vs": fp32.name,
            "speedup": round(float(np.median(ratios)), 3),
            "p50_ms": round(float(np.median(t_int8)), 3),
            "vs_p50_ms": round(float(np.median(t_fp32)), 3),
            "pairs": len(ratios),
            "min_speedup": c.min_int8_speedup,
        }
    return out


def _engine_entry(spec: EngineSpec, m: dict, ref: dict, latency: dict, run_dir: Path) -> dict[str, Any]:
    mo = latency["model_only"]
    return {
        "name": spec.name,
        "backend": spec.backend,
        "precision": spec.precision,
        "path": spec.path.relative_to(run_dir).as_posix()
        if spec.path.is_relative_to(run_dir)
        else str(spec.path),
        "map": m["map"],
        "map50": m["map50"],
        "map_delta": round(m["map"] - ref["map"], 4),
        "map50_delta": round(m["map50"] - ref["map50"], 4),
        "ap_small_delta": round(m["map_small"] - ref["map_small"], 4),
        "ap_medium_delta": round(m["map_medium"] - ref["map_medium"], 4),
        "ap_large_delta": round(m["map_large"] - ref["map_large"], 4),
        "per_class_delta": {k: round(v - ref["per_class"].get(k, 0.0), 4) for k, v in m["per_class"].items()},
        "metrics": m,
        "latency_ms": {k: mo[k] for k in ("p50", "p90", "p99", "mean")},
        "fps": mo["fps"],
        "latency": latency,
    }


def _gates(entry: dict, cfg: Config, *, is_reference: bool, selected: tuple[str, ...] = ()) -> dict[str, Any]:
    """The engine's gate results; ``selected`` outputs (see ``Decoder.selected_outputs``) only fail on
    NaN/Inf."""
    precision = entry["precision"]
    max_drop = cfg.check.max_map_drop.get(precision)
    min_cos = cfg.check.min_cosine.get(precision)
    failed: list[str] = []
    if not is_reference:
        if max_drop is not None and entry["map"] < 0:  # COCOeval's -1: no ground truth (refused up front)
            failed.append("mAP undefined: no ground truth in the evaluated images, nothing to measure")
        elif max_drop is not None and abs(entry["map_delta"]) > max_drop:
            failed.append(f"mAP delta {entry['map_delta']:+.3f} exceeds ±{max_drop} AP points")
        # per-level outputs level by level, then the outputs that are not per level (two-stage heads)
        per_level = [
            (f"{branch}_{level}", stats, f" (level {level})")
            for level, branches in entry.get("levels", {}).items()
            for branch, stats in branches.items()
        ]
        whole = [
            (name, stats, "")
            for name, stats in entry.get("outputs", {}).items()
            if split_output_name(name)[1] is None
        ]
        for name, stats, where in per_level + whole:
            if stats["nonfinite"]:
                failed.append(f"{name}: {stats['nonfinite']} NaN/Inf values{where}")
            elif name in selected:
                continue
            elif min_cos is not None and stats["cosine"] < min_cos:
                failed.append(f"{name}: cosine {stats['cosine']:.6f} < {min_cos}{where}")
            elif min_cos is not None and stats["snr_db"] < (floor := _snr_floor_db(min_cos)):
                failed.append(
                    f"{name}: SNR {stats['snr_db']:.1f} dB < {floor:.1f} dB, the floor "
                    f"min cosine {min_cos} implies (a scale error cosine cannot see){where}"
                )
        if "twin" in entry:
            failed += _twin_failures(entry["twin"], precision)
    if (speed := entry.get("int8_speedup")) and speed["speedup"] < speed["min_speedup"]:
        what = "slower than" if speed["speedup"] < 1 else "not enough faster than"
        failed.append(
            f"INT8 is {what} {speed['vs']}: {speed['speedup']:.2f}x its speed, model only "
            f"({speed['p50_ms']:.2f} vs {speed['vs_p50_ms']:.2f} ms p50 over {speed['pairs']} "
            f"interleaved pairs; check.min_int8_speedup {speed['min_speedup']:g})"
        )
    return {"max_map_drop": max_drop, "min_cosine": min_cos, "failed": failed, "passed": not failed}


def _twin_failures(twin: dict[str, Any], precision: str) -> list[str]:
    """An end-to-end engine against its raw twin (E2E_AGREEMENT): one line per broken bound."""
    if not twin["present"]:
        return [f"no {twin['engine']} to compare the in-graph contract with (build or check it too)"]
    min_matched, min_iou, max_err = E2E_AGREEMENT.get(precision, E2E_AGREEMENT["int8"])
    vs = f"vs {twin['engine']}"
    failed = []
    if twin["matched_fraction"] < min_matched:
        failed.append(
            f"detections {vs}: matched fraction {twin['matched_fraction']:.4f} < {min_matched} "
            f"({twin['matched']} of {max(twin['n_ref'], twin['n_test'])}; {twin['label_flips']} label flips)"
        )
    if twin["mean_iou"] < min_iou:
        failed.append(f"detections {vs}: mean IoU {twin['mean_iou']:.4f} < {min_iou}")
    if twin["max_score_error"] > max_err:
        failed.append(f"detections {vs}: max score error {twin['max_score_error']:.2g} > {max_err:g}")
    return failed


def _snr_floor_db(min_cosine: float) -> float:
    """SNR floor that goes with ``min_cosine``: the SNR of an error orthogonal to the reference at that
    cosine, cos² / (1 - cos²), less 3 dB.

    Cosine is blind to scale (2 x ref has cosine 1), so the same tolerance is also applied as an SNR
    floor: a scaled or offset level fails it. The 3 dB (twice the error energy) leaves room for real
    quantization error, which is slightly correlated with the reference and measured 0.5-2 dB below
    the orthogonal figure on the tiny model's int8 and fp16 engines, so that engines passing the
    cosine gate do not newly fail. Floors: fp32 0.99999 -> 44 dB, fp16 0.999 -> 24 dB, int8 0.97 -> 9 dB.
    """
    c2 = min(max(min_cosine, 0.0), 1.0 - 1e-12) ** 2
    return 10.0 * math.log10(c2 / (1.0 - c2)) - 3.0 if c2 > 0 else float("-inf")

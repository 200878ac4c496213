"""Command `benchmark`: named FPS scenarios of every engine in the run directory, each with its conditions.

Per engine (``engines[].scenarios``, definitions in :data:`edgefpn.runtime.scenarios.FPS_DEFINITIONS`):

* ``single_stream``: batch-1 latency p50 / p90 / p99 over ``iters`` timed calls after ``check.warmup``
  untimed ones, model-only and end to end (image file -> detections at the deploy threshold, when the
  val images are on disk), and ``fps`` = 1000 / mean model-only latency.
* ``offline``: the best model-only throughput over requests in flight, streams and batch (every
  batch-N engine ``--batch`` built), each sweep point ``throughput_seconds`` long.
* ``streaming`` is written by the streaming runtime's benchmark where it exists (shown when present).

``batch_sweep`` adds, per engine and batch, the latency of one batch-N call and the best throughput at
that batch. ``--batch 1,2,4,8`` makes the batch-N engines it needs in ``RUN_DIR/batch-N/`` (an edgefpn
run directory of its own, loading this run's ``model.pt`` as ``model.weights``, with ``export.batch=N``,
fp32 and int8 only): each artifact there keeps its manifest and is skipped when up to date.

Cross-check with OpenVINO's ``benchmark_app`` (:mod:`edgefpn.benchmarking.benchmark_app`), interleaved round
by round so both see the same machine (``app_rounds`` rounds of ours then theirs, ``app_seconds`` in
all per mode): ``single_stream`` against its latency mode (same threads, f32, sync API, same input);
``offline`` against its async mode at our best point (same streams, requests, threads, batch). The
ratio is the median over rounds of (ours / theirs).

Without ``--batch`` beyond the run's own, torch is imported nowhere on this path: it runs on a device
that has only the inference runtime (and edgefpn).
"""

from __future__ import annotations

import dataclasses
import tempfile
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
from edgefpn.backends import BACKENDS, RUNNERS, EngineSpec, open_runner
from edgefpn.backends.base import INPUT_NAME
from edgefpn.benchmarking.benchmark_app import parse_benchmark_app
from edgefpn.benchmarking.cross_check import offline_cross_check, single_stream
from edgefpn.benchmarking.timing import batch_sweep, end_to_end
from edgefpn.config import Config
from edgefpn.errors import ConfigError, ModelFileError
from edgefpn.pipeline import e2e as e2e_stage
from edgefpn.pipeline.check import ENGINE_FILES
from edgefpn.pipeline.common import log, make_prepost
from edgefpn.pipeline.lineage import current_engines
from edgefpn.report.benchmark_md import render_markdown
from edgefpn.report.check_md import system_info
from edgefpn.runtime import scenarios as sc
from edgefpn.runtime.scenario import streaming_scenario
from edgefpn.stages import BENCHMARK

__all__ = ["ARTIFACT", "batch_run", "parse_benchmark_app", "render_markdown", "run"]

ARTIFACT = "benchmark.json"
SCHEMA = "edgefpn.benchmark/2"


def run(
    cfg: Config,
    run_dir: Path,
    *,
    force: bool = False,
    progress: bool = True,
    iters: int | None = None,
    app_seconds: float = 10.0,
    app_rounds: int = 3,
    throughput_seconds: float = 5.0,
    batches: Sequence[int] = (),
    stream_frames: int = 1000,
) -> Artifact:
    """Benchmark every engine in ``run_dir``; write ``benchmark.json`` and ``benchmark.md``.

    Args:
        iters: timed single-stream calls per engine (per round for OpenVINO engines; default
            ``check.latency_iters``); a batch-N latency takes ``max(10, iters // N)`` calls.
        app_seconds: ``benchmark_app`` time per OpenVINO engine and mode, split over ``app_rounds``
            (0 skips the cross-check).
        app_rounds: interleaved (ours, benchmark_app) rounds per OpenVINO engine and mode.
        throughput_seconds: duration of each offline sweep point.
        batches: engine batches to sweep besides the run's own ``export.batch`` (built in ``batch-N/``).
        stream_frames: the ``streaming`` scenario's video is as many whole passes over the val images
            as reach this many frames (a steady state: filling and draining the pipeline then weigh
            little; 1: one pass).

    Raises:
        ModelFileError: the run directory holds no engine.
        ConfigError: a batch below 1.
    """
    from edgefpn.pipeline.train import refused_settings

    refused_settings(cfg, run_dir, "edgefpn benchmark")  # the engines here come from the run's model
    if app_rounds < 1:
        raise ValueError(f"app_rounds must be >= 1, got {app_rounds}")
    if any(n < 1 for n in batches):
        raise ConfigError(f"--batch: every batch must be >= 1, got {', '.join(map(str, batches))}")
    # as check: only the engines of this configuration that chain to this run's model.pt
    engines, ignored = current_engines(cfg, run_dir, cfg.check.backends, ENGINE_FILES)
    for e in ignored:
        log(f"[benchmark] ignored {e.name} ({e.path}): {e.reason}")
    if not engines:
        left = f"; {len(ignored)} ignored, first {ignored[0].name}: {ignored[0].reason}" if ignored else ""
        raise ModelFileError(
            f"{run_dir}: no engine to benchmark (run `edgefpn export` / `edgefpn build` first){left}"
        )
    own = cfg.export.batch
    sweep = sorted(set(batches) | {own})
    by_batch = {own: engines} | {n: _batch_engines(cfg, run_dir, n, progress) for n in sweep if n != own}
    iters = iters or cfg.check.latency_iters
    threads = cfg.run.threads
    image, source, paths = _image(cfg)
    feed = _engine_feed(cfg, "", image)  # the float contract's: the report's input shape
    out = run_dir / ARTIFACT
    machine = system_info(threads)
    given = {
        "iters": iters,
        "app_seconds": app_seconds,
        "app_rounds": app_rounds,
        "throughput_seconds": throughput_seconds,
        "stream_frames": stream_frames,
        "input": source,
        "batches": sweep,
        "end_to_end": bool(paths),
        "cpu": machine["cpu"],
        "backend_versions": backend_versions(),
    }
    (settings,) = BENCHMARK.resolve(cfg, **given)  # recorded in the report as hashed
    chash = BENCHMARK.config_hash(cfg, **given)
    inputs = {
        (e.name if n == own else f"batch-{n}/{e.name}"): sha256_path(e.path)
        for n, specs in by_batch.items()
        for e in specs
    }
    (md,) = BENCHMARK.side_paths(out)  # benchmark.md
    if art := BENCHMARK.fresh(out, config_hash=chash, inputs=inputs, force=force):
        log(f"[benchmark] up to date: {out} (--force re-measures)")
        return art

    rows, sweep_rows = [], []
    deploy = make_prepost(cfg, deploy=True) if paths else None
    video_dir = tempfile.TemporaryDirectory(prefix="edgefpn-val-video-")
    video = _val_video(cfg, Path(video_dir.name), stream_frames)
    for spec in engines:
        if not RUNNERS[spec.backend].is_available():
            rows.append(
                _row(spec) | {"skipped": f"backend {spec.backend!r} is not installed on this machine"}
            )
            log(f"[benchmark] skipped {spec.name}: {spec.backend} not installed")
            continue
        # an in-graph (-e2e) engine is fed and read in its own contract (uint8 image in, detections
        # out); benchmark_app cross-checks the raw engines only (it feeds one float input here)
        in_graph = spec.name.endswith(e2e_stage.SUFFIX)
        efeed = _engine_feed(cfg, spec.name, image)
        app = 0.0 if in_graph else app_seconds
        family = {n: s for n, specs in by_batch.items() for s in specs if s.name == spec.name}
        ss = single_stream(spec, efeed, cfg, iters, app, app_rounds, own)
        if deploy is not None:
            e2e = end_to_end(
                spec, e2e_stage.in_contract(deploy, cfg, spec.name), paths, threads, cfg.check.warmup, iters
            )
            ss = sc.single_stream(ss.pop("_samples"), threads=threads, batch=own, end_to_end_ms=e2e, **ss)
        else:
            ss = sc.single_stream(ss.pop("_samples"), threads=threads, batch=own, **ss)
        log(f"[benchmark] {spec.name}: offline sweep over batch {', '.join(map(str, family))}")
        off = sc.offline(
            list(family.values()),
            efeed,
            threads=threads,
            seconds=throughput_seconds,
            open_runner=open_runner,
            log=log,
        )
        if BACKENDS[spec.backend].benchmark_app and app > 0:
            off["benchmark_app"] = offline_cross_check(family, off, efeed, threads, app, app_rounds)
        scenarios = {"single_stream": ss, "offline": off}
        if video is not None:
            log(f"[benchmark] {spec.name}: streaming the val video at the deploy and eval thresholds")
        scenarios["streaming"] = streaming_scenario(  # {"skipped": why} without val images on disk
            spec,
            {
                "deploy": e2e_stage.in_contract(make_prepost(cfg, deploy=True), cfg, spec.name),
                "eval": e2e_stage.in_contract(make_prepost(cfg), cfg, spec.name),
            },
            video,
            threads=threads,
        )
        rows.append(
            _row(spec) | {"latency_ms": ss["model_only_ms"], "fps": ss["fps"], "scenarios": scenarios}
        )
        sweep_rows += batch_sweep(family, off["sweep"], efeed, threads, cfg.check.warmup, iters)
    video_dir.cleanup()

    report = {
        "schema": SCHEMA,
        "input": {"source": source, "shape": list(feed[INPUT_NAME].shape)},
        "settings": settings,
        "definitions": dict(sc.FPS_DEFINITIONS),
        "engines": rows,
        "batch_sweep": sweep_rows,
        "machine": machine,
    }
    if (flops := _flops(run_dir / "model.onnx", rows, threads)) is not None:
        report["flops"] = flops
    write_json(out, report)
    atomic_write_text(md, render_markdown(report))
    art = BENCHMARK.record(out, config_hash=chash, inputs=inputs)
    log(f"[benchmark] wrote {out} and {md}")
    return art


def batch_run(cfg: Config, run_dir: Path, batch: int) -> tuple[Config, Path]:
    """The configuration and run directory of this run's batch-``batch`` engines: ``run_dir/batch-N``,
    loading ``run_dir/model.pt`` as ``model.weights`` with ``export.batch=N``, fp32 and int8 only (fp16
    is left out of the sweep: CPUs compute it in f32)."""
    sub = run_dir / f"batch-{batch}"
    r = dataclasses.replace
    derived = r(
        cfg,
        run=r(cfg.run, out=str(sub)),
        export=r(cfg.export, batch=batch),
        model=r(cfg.model, weights=str((run_dir / "model.pt").resolve()), backbone_weights=None),
        quantize=r(cfg.quantize, fp16=False),
        build=r(cfg.build, precisions=tuple(p for p in cfg.build.precisions if p != "fp16")),
    )
    return derived, sub


def _batch_engines(cfg: Config, run_dir: Path, batch: int, progress: bool) -> list[EngineSpec]:
    from edgefpn.pipeline import build as build_stage

    if not (run_dir / "model.pt").is_file():
        raise ModelFileError(
            f"{run_dir}/model.pt: --batch {batch} exports from the run's model; train it first"
        )
    derived, sub = batch_run(cfg, run_dir, batch)
    log(
        f"[benchmark] batch {batch}: engines in {sub} (export.batch={batch}; each stage skipped when "
        "up to date)"
    )
    build_stage.run(derived, sub, progress=progress)  # export and quantize first, as make would
    specs, ignored = current_engines(derived, sub, cfg.check.backends, ENGINE_FILES)
    for e in ignored:
        log(f"[benchmark] batch {batch}: ignored {e.name} ({e.path}): {e.reason}")
    return specs


def _row(spec: EngineSpec) -> dict[str, Any]:
    return {"name": spec.name, "backend": spec.backend, "precision": spec.precision}


def _image(cfg: Config) -> tuple[np.ndarray | None, str, list[Path]]:
    """The first val image (decoded RGB) and the val image files (end to end) when the dataset is on
    disk; else no image (a fixed synthetic input: :func:`_engine_feed`) and no files."""
    from edgefpn.data.coco import load_split
    from edgefpn.data.preprocess import load_image

    root = Path(cfg.data.root)
    if (root / "annotations" / f"instances_{cfg.data.val_split}.json").is_file():
        split = load_split(root, cfg.data.val_split)
        if split.images:
            path = split.images[0].path
            return load_image(path), f"val image {path.name}", [r.path for r in split.images]
    return None, "synthetic N(0, 1), seed 0 (uint8 engines: uniform pixels, seed 0)", []


def _engine_feed(cfg: Config, name: str, image: np.ndarray | None) -> dict[str, np.ndarray]:
    """Engine ``name``'s batch-1 feed of ``image`` in its contract (float ``images`` or uint8
    ``images_u8`` + ``valid_hw``; a detections engine's ``score_thresh`` at the deployment threshold);
    without an image a fixed synthetic input."""
    pipe = e2e_stage.in_contract(make_prepost(cfg, deploy=True), cfg, name)
    if image is not None:
        return pipe.feed_image(image)[0]
    h, w = cfg.model.input_size
    rng = np.random.default_rng(0)
    if pipe.input == "uint8":
        return pipe.feed_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))[0]
    return {INPUT_NAME: rng.standard_normal((1, 3, h, w)).astype(np.float32), **pipe.graph_inputs(1)}


def _val_video(cfg: Config, folder: Path, min_frames: int) -> Path | None:
    """The val images as a video (the ``streaming`` scenario's source), or None without a dataset."""
    from edgefpn.data.coco import load_split
    from edgefpn.runtime.scenario import write_video

    root = Path(cfg.data.root)
    if not (root / "annotations" / f"instances_{cfg.data.val_split}.json").is_file():
        return None
    paths = [Path(im.path) for im in load_split(root, cfg.data.val_split).images]
    if not paths:
        return None
    write_video(paths, folder / "val.avi", min_frames=min_frames)
    return folder / "val.avi"


def _flops(onnx_path: Path, rows: list[dict[str, Any]], threads: int) -> dict[str, Any] | None:
    """FLOPs and achieved GFLOP/s, where the onnx package is installed (a runtime-only device may lack it)."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None or not onnx_path.is_file():
        return None
    from edgefpn.flops import achieved, count_flops, cpu_peak

    flops = count_flops(onnx_path)
    peak = cpu_peak(threads)
    for row in rows:
        if "latency_ms" in row:
            row.update(achieved(flops["gflops_per_image"], row["latency_ms"]["p50"], row["precision"], peak))
    return {"gflops_per_image": flops["gflops_per_image"], "convention": flops["convention"], "peak": peak}

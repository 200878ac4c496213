"""Command `benchmark`: latency and throughput of every engine in the run directory, runtime only.

Unlike `check`, nothing here needs the PyTorch reference or the dataset, and torch is imported
nowhere on this path, so it runs on a device that has only the inference runtime (and edgefpn).
The input is the first val image when the dataset is on disk, else a fixed synthetic tensor (for
model-only timing the pixel values do not matter; NMS, which they would change, is not timed).

Per engine: batch-1 model-only latency (p50 / p90 / p99, mean, FPS) over ``iters`` timed calls
after ``check.warmup`` untimed ones, and a throughput figure: for OpenVINO, the THROUGHPUT hint
with as many async requests as the plugin asks for; for the others, the batch-1 loop's FPS.

Cross-check: OpenVINO engines are also timed by OpenVINO's own ``benchmark_app`` with the same
settings as our runner (latency hint, ``INFERENCE_NUM_THREADS``, f32 inference precision, f32
input, sync API) on the same input tensor (``-i input.npy``). On a shared machine one pair of runs
can disagree by 20% from noise alone, so the two are interleaved: ``app_rounds`` rounds of (our
``iters`` calls, then ``benchmark_app`` for ``app_seconds / app_rounds``). The engine's latency is
over all its rounds' samples; the ratio is the median over rounds of (our p50 / benchmark_app's median).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.artifacts import (
    Artifact,
    atomic_write_text,
    backend_versions,
    sha256_path,
    up_to_date,
    write_json,
    write_manifest,
)
from edgefpn.backends import RUNNERS, EngineSpec, open_runner
from edgefpn.backends.base import INPUT_NAME
from edgefpn.config import Config, config_hash
from edgefpn.errors import ModelFileError
from edgefpn.pipeline import e2e as e2e_stage
from edgefpn.pipeline.check import ENGINE_FILES
from edgefpn.pipeline.common import log, make_pipeline
from edgefpn.pipeline.lineage import current_engines
from edgefpn.pipeline.report import system_info
from edgefpn.runtime.scenario import streaming_scenario

__all__ = ["ARTIFACT", "parse_benchmark_app", "render_markdown", "run"]

ARTIFACT = "benchmark.json"
SCHEMA = "edgefpn.benchmark/1"


def run(cfg: Config, run_dir: Path, *, force: bool = False, progress: bool = True, iters: int | None = None,
        app_seconds: float = 10.0, app_rounds: int = 3, throughput_seconds: float = 5.0) -> Artifact:
    """Benchmark every engine in ``run_dir``; write ``benchmark.json`` and ``benchmark.md``.

    Args:
        iters: timed batch-1 calls per engine (per round for OpenVINO engines; default
            ``check.latency_iters``).
        app_seconds: total ``benchmark_app`` time per OpenVINO engine, split over ``app_rounds``
            (0 skips the cross-check).
        app_rounds: interleaved (ours, benchmark_app) rounds per OpenVINO engine.
        throughput_seconds: duration of each OpenVINO throughput run.

    Raises:
        ModelFileError: the run directory holds no engine.
    """
    from edgefpn.pipeline.train import refused_settings

    refused_settings(cfg, run_dir, "edgefpn benchmark")  # the engines here come from the run's model
    # as check: only the engines of this configuration that chain to this run's model.pt
    engines, ignored = current_engines(cfg, run_dir, cfg.check.backends, ENGINE_FILES)
    for e in ignored:
        log(f"[benchmark] ignored {e.name} ({e.path}): {e.reason}")
    if not engines:
        left = f"; {len(ignored)} ignored, first {ignored[0].name}: {ignored[0].reason}" if ignored else ""
        raise ModelFileError(f"{run_dir}: no engine to benchmark (run `edgefpn export` / `edgefpn build` first){left}")
    iters = iters or cfg.check.latency_iters
    threads = cfg.run.threads
    feed, source = _feed(cfg)
    out = run_dir / ARTIFACT
    machine = system_info(threads)
    if app_rounds < 1:
        raise ValueError(f"app_rounds must be >= 1, got {app_rounds}")
    settings = {"iters": iters, "warmup": cfg.check.warmup, "threads": threads, "app_seconds": app_seconds,
                "app_rounds": app_rounds, "throughput_seconds": throughput_seconds, "input": source,
                "scenarios": ["streaming"],
                "cpu": machine["cpu"], "versions": backend_versions()}
    chash = config_hash(settings)
    inputs = {e.name: sha256_path(e.path) for e in engines}
    md = run_dir / "benchmark.md"
    if not force and (art := up_to_date(out, config_hash=chash, inputs=inputs, outputs=[md])):
        log(f"[benchmark] up to date: {out} (--force re-measures)")
        return art

    rows = []
    video_dir = tempfile.TemporaryDirectory(prefix="edgefpn-val-video-")
    video = _val_video(cfg, Path(video_dir.name))
    for spec in engines:
        spec_feed = feed
        if e2e_stage.contract_of(cfg, spec.name)[0] == "uint8":  # an in-graph twin fed the uint8 image
            spec_feed = _uint8_feed(cfg)
        if not RUNNERS[spec.backend].is_available():
            rows.append(_row(spec) | {"skipped": f"backend {spec.backend!r} is not installed on this machine"})
            log(f"[benchmark] skipped {spec.name}: {spec.backend} not installed")
            continue
        if spec.backend == "openvino" and app_seconds > 0 and INPUT_NAME in spec_feed:  # benchmark_app: float .npy
            log(f"[benchmark] {spec.name}: {app_rounds} rounds of {iters} x batch 1, then benchmark_app "
                f"-t {_round_seconds(app_seconds, app_rounds)}")
            samples, app = _cross_check(spec, spec_feed, threads, cfg.check.warmup, iters, app_seconds, app_rounds)
            row = _row(spec) | _stats(samples)
            row["benchmark_app"] = app
        else:
            log(f"[benchmark] {spec.name}: {iters} x batch 1")
            row = _row(spec) | _stats(_latency(spec, spec_feed, threads, cfg.check.warmup, iters))
        row["throughput"] = _throughput(spec, spec_feed, threads, throughput_seconds, row["fps"])
        if not spec.name.endswith(e2e_stage.SUFFIX):  # the streaming runtime feeds raw float engines only
            log(f"[benchmark] {spec.name}: streaming the val video at the deploy and eval thresholds")
            row["scenarios"] = {"streaming": streaming_scenario(
                spec, {"deploy": make_pipeline(cfg, deploy=True), "eval": make_pipeline(cfg)}, video, threads=threads)}
        rows.append(row)
    video_dir.cleanup()

    report = {"schema": SCHEMA, "input": {"source": source, "shape": list(feed[INPUT_NAME].shape)},
              "settings": settings, "engines": rows, "machine": machine}
    if (flops := _flops(run_dir / "model.onnx", rows, threads)) is not None:
        report["flops"] = flops
    write_json(out, report)
    atomic_write_text(md, render_markdown(report))
    art = write_manifest(out, stage="benchmark", config_hash=chash, inputs=inputs, outputs=[md])
    log(f"[benchmark] wrote {out} and {md}")
    return art


def _row(spec: EngineSpec) -> dict[str, Any]:
    return {"name": spec.name, "backend": spec.backend, "precision": spec.precision}


def _uint8_feed(cfg: Config) -> dict[str, np.ndarray]:
    """The uint8 contract's feed of the same image as :func:`_feed` (a fixed random image without data)."""
    from dataclasses import replace

    from edgefpn.data.coco import load_split
    from edgefpn.data.preprocess import load_image

    pipe = replace(make_pipeline(cfg), input="uint8")
    root = Path(cfg.data.root)
    if (root / "annotations" / f"instances_{cfg.data.val_split}.json").is_file():
        split = load_split(root, cfg.data.val_split)
        if split.images:
            return pipe.feed_image(load_image(split.images[0].path))[0]
    rng = np.random.default_rng(0)
    return pipe.feed_image(rng.integers(0, 256, (*cfg.model.input_size, 3), dtype=np.uint8))[0]


def _feed(cfg: Config) -> tuple[dict[str, np.ndarray], str]:
    """The first val image, preprocessed, when the dataset is on disk; else a fixed synthetic input."""
    from edgefpn.data.coco import load_split
    from edgefpn.data.preprocess import load_image

    root = Path(cfg.data.root)
    if (root / "annotations" / f"instances_{cfg.data.val_split}.json").is_file():
        split = load_split(root, cfg.data.val_split)
        if split.images:
            batch, _ = make_pipeline(cfg).prepare(load_image(split.images[0].path))
            return {INPUT_NAME: batch}, f"val image {split.images[0].path.name}"
    h, w = cfg.model.input_size
    batch = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    return {INPUT_NAME: batch}, "synthetic N(0, 1), seed 0"


def _val_video(cfg: Config, folder: Path) -> Path | None:
    """The val images as a video (the ``streaming`` scenario's source), or None without a dataset."""
    from edgefpn.data.coco import load_split
    from edgefpn.runtime.scenario import write_video

    root = Path(cfg.data.root)
    if not (root / "annotations" / f"instances_{cfg.data.val_split}.json").is_file():
        return None
    paths = [Path(im.path) for im in load_split(root, cfg.data.val_split).images]
    if not paths:
        return None
    write_video(paths, folder / "val.avi")
    return folder / "val.avi"


def _latency(spec: EngineSpec, feed: dict[str, np.ndarray], threads: int, warmup: int,
             iters: int) -> list[float]:
    """``iters`` timed engine calls (ms) after ``warmup`` untimed ones, on a freshly opened runner."""
    samples = []
    with open_runner(spec, threads=threads) as runner:
        for _ in range(warmup):
            runner.infer(feed)
        for _ in range(iters):
            t0 = time.perf_counter()
            runner.infer(feed)
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def _stats(samples: list[float]) -> dict[str, Any]:
    arr = np.asarray(samples)
    return {
        "latency_ms": {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in (50, 90, 99)}
        | {"mean": round(float(arr.mean()), 3)},
        "fps": round(1000.0 / float(arr.mean()), 2),
        "samples_ms": [round(t, 4) for t in samples],
    }


def _round_seconds(total: float, rounds: int) -> int:
    """benchmark_app's ``-t`` per round: whole seconds (it accepts nothing else), at least 1."""
    return max(1, round(total / rounds))


def _cross_check(spec: EngineSpec, feed: dict[str, np.ndarray], threads: int, warmup: int, iters: int,
                 app_seconds: float, rounds: int) -> tuple[list[float], dict[str, Any]]:
    """Our timing and benchmark_app's, interleaved round by round so that both see the same machine.

    Returns all our samples (ms) and the benchmark_app record: per-round statistics and the median of
    the rounds' medians (``median_ms``), or ``skipped`` with the reason.
    """
    samples: list[float] = []
    app_rounds: list[dict[str, float]] = []
    record: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # the very tensor we time, so that both tools run the same input (benchmark_app's default
        # is uniform noise in [0, 255], far outside a normalised image's range)
        npy = Path(tmp) / "input.npy"
        np.save(npy, np.ascontiguousarray(feed[INPUT_NAME], dtype=np.float32))
        for _ in range(rounds):
            ours = _latency(spec, feed, threads, warmup, iters)
            samples.extend(ours)
            record = _benchmark_app(spec, threads, _round_seconds(app_seconds, rounds), npy)
            if "median_ms" not in record:
                return samples, record
            app_rounds.append({k: record[k] for k in _APP_PATTERNS if k in record}
                              | {"ours_p50_ms": round(float(np.median(ours)), 3)})
    medians = [r["median_ms"] for r in app_rounds]
    # each round's pair ran back to back; the median of the pairs' ratios ignores a round that another
    # process disturbed, which a ratio of pooled figures would not
    ratios = [r["ours_p50_ms"] / r["median_ms"] for r in app_rounds]
    return samples, {"command": record["command"], "load_config": record["load_config"], "rounds": app_rounds,
                     "median_ms": round(float(np.median(medians)), 3),
                     "ours_over_app_p50": round(float(np.median(ratios)), 3)}


def _throughput(spec: EngineSpec, feed: dict[str, np.ndarray], threads: int, seconds: float,
                loop_fps: float) -> dict[str, Any]:
    if spec.backend != "openvino":
        return {"fps": loop_fps, "mode": "batch-1 sync loop (the latency run)"}
    import openvino as ov

    from edgefpn.backends.openvino import OpenVinoRunner

    with OpenVinoRunner(spec, threads=threads, hint="throughput") as runner:
        compiled = runner.compiled
        nireq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, nireq)
        for _ in range(nireq):  # warm every request once
            queue.start_async(feed)
        queue.wait_all()
        done = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            queue.start_async(feed)  # blocks while every request is busy
            done += 1
        queue.wait_all()
        elapsed = time.perf_counter() - t0
        streams = int(compiled.get_property("NUM_STREAMS"))
    return {"fps": round(done / elapsed, 2), "mode": "openvino THROUGHPUT hint, async requests",
            "requests": nireq, "streams": streams, "inferences": done, "seconds": round(elapsed, 2)}


def _streaming_cells(row: dict[str, Any]) -> str:
    """The two streaming cells of a row: FPS (and its ratio to the throughput figure), p50 / p99."""
    st = row.get("scenarios", {}).get("streaming", {})
    cells = []
    for name in ("deploy", "eval"):
        if name not in st:
            cells.append("–")
            continue
        r, tp = st[name], row["throughput"]["fps"]
        cells.append(f"{r['fps']:.1f} ({r['fps'] / tp:.2f}x throughput; {r['latency_ms']['p50']:.1f} / "
                     f"{r['latency_ms']['p99']:.1f})")
    return " | ".join(cells)


_APP_PATTERNS = {
    "median_ms": r"Median:\s+([\d.]+)\s*ms",
    "average_ms": r"Average:\s+([\d.]+)\s*ms",
    "min_ms": r"Min:\s+([\d.]+)\s*ms",
    "max_ms": r"Max:\s+([\d.]+)\s*ms",
    "fps": r"Throughput:\s+([\d.]+)\s*FPS",
    "count": r"Count:\s+(\d+)\s+iterations",
}


def parse_benchmark_app(text: str) -> dict[str, float]:
    """The latency statistics and throughput of ``benchmark_app``'s log (keys that were found)."""
    found = {}
    for key, pattern in _APP_PATTERNS.items():
        if m := re.search(pattern, text):
            found[key] = float(m.group(1))
    return found


def _benchmark_app_exe() -> str | None:
    beside = Path(sys.executable).parent / "benchmark_app"
    return str(beside) if beside.is_file() else shutil.which("benchmark_app")


def _benchmark_app(spec: EngineSpec, threads: int, seconds: int, input_npy: Path) -> dict[str, Any]:
    from edgefpn.backends.openvino import ir_xml

    exe = _benchmark_app_exe()
    if exe is None:
        return {"skipped": "benchmark_app not found (it ships with the openvino package)"}
    # benchmark_app rejects -nthreads together with a hint, so the thread count goes in -load_config;
    # -ip f32 stops it from feeding u8 (it treats a 3-channel NCHW input as an image by default)
    plugin_config = {"CPU": {"INFERENCE_NUM_THREADS": threads}}
    args = ["-m", str(ir_xml(spec.path)), "-d", "CPU", "-hint", "latency", "-load_config", "CONFIG",
            "-t", str(seconds), "-infer_precision", "f32", "-ip", "f32", "-api", "sync", "-i", "INPUT.npy"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / "config.json"
        cfg_file.write_text(json.dumps(plugin_config), encoding="utf-8")
        cmd = [exe, *[{"CONFIG": str(cfg_file), "INPUT.npy": str(input_npy)}.get(a, a) for a in args]]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 5 + 120, check=False)
        except subprocess.TimeoutExpired:
            return {"skipped": f"benchmark_app did not finish in {seconds * 5 + 120:g} s"}
    stats = parse_benchmark_app(proc.stdout + proc.stderr)
    record = {"command": "benchmark_app " + shlex.join(args), "load_config": plugin_config}
    if proc.returncode != 0 or "median_ms" not in stats:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        return record | {"skipped": f"benchmark_app failed (exit {proc.returncode}): {tail[0][:200]}"}
    return record | stats


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


def render_markdown(report: dict[str, Any]) -> str:
    """benchmark.md: one table, the cross-check beside our own figures."""
    m = report["machine"]
    lines = [
        "# edgefpn benchmark",
        "",
        f"{m['cpu']}, {report['settings']['threads']} threads · input {report['input']['source']} "
        f"{report['input']['shape']} · {report['settings']['iters']} timed iterations after "
        f"{report['settings']['warmup']} warm-up",
        "",
        "| engine | precision | p50 ms | p90 ms | p99 ms | FPS (batch 1) | throughput FPS | GFLOP/s (% nominal peak) | "
        "benchmark_app median ms | ours / benchmark_app | streaming FPS, deploy (p50 / p99 ms) | "
        "streaming FPS, eval (p50 / p99 ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["engines"]:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r['precision']} | " + " | ".join(["–"] * 9) + f" | skipped: {r['skipped']} |")
            continue
        lat, tp = r["latency_ms"], r["throughput"]
        tp_txt = f"{tp['fps']:.1f}" + (f" ({tp['requests']} req, {tp['streams']} streams)" if "requests" in tp else "")
        compute = "–"
        if r.get("achieved_gflops") is not None:
            frac = r.get("fraction_of_peak")
            compute = f"{r['achieved_gflops']:.1f}" + (f" ({100 * frac:.1f}% {r['peak_basis']})" if frac else "")
        app = r.get("benchmark_app", {})
        app_med = f"{app['median_ms']:.2f}" if "median_ms" in app else ("–" if not app else "failed")
        ratio = f"{app['ours_over_app_p50']:.2f}" if "ours_over_app_p50" in app else "–"
        lines.append(f"| {r['name']} | {r['precision']} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | "
                     f"{r['fps']:.1f} | {tp_txt} | {compute} | {app_med} | {ratio} | {_streaming_cells(r)} |")
    rounds = report["settings"].get("app_rounds", 1)
    lines += ["", "Latency is model-only (engine call), batch 1. Throughput: OpenVINO with the THROUGHPUT hint "
              "and async requests; other backends: the batch-1 loop. benchmark_app runs with the same settings "
              "as our runner (latency hint, same threads, f32 inference precision, sync API) on the same input "
              f"tensor, interleaved with ours in {rounds} round(s): an OpenVINO engine's p50 is over all its "
              "rounds, the benchmark_app figure is the median of its rounds' medians, and ours / benchmark_app is "
              "the median of the rounds' ratios."]
    lines += ["", "Streaming: the pipelined runtime (`python -m edgefpn.runtime stream`) on a video of the val "
              "images: video decode, preprocessing, inference and decode + NMS overlapped on worker threads, "
              "frames out over wall time from the first capture to the last detection, latency capture to "
              "detection; conditions (threads, engine streams, requests in flight, batch) in benchmark.json."]
    if f := report.get("flops"):
        lines += ["", f"Compute: {f['gflops_per_image']:.3f} GFLOPs per image ({f['convention']}); peak "
                  f"{f['peak']['fp32_gflops']:.0f} GFLOP/s fp32, {f['peak']['int8_gops']:.0f} GOP/s int8 "
                  f"({f['peak']['fp32_basis']})."]
    for r in report["engines"]:
        if (app := r.get("benchmark_app")) and "command" in app:
            lines += ["", f"{r['name']}: `{app['command']}` with `{json.dumps(app['load_config'])}`"
                      + (f" — {app['skipped']}" if "skipped" in app else "")]
    lines.append("")
    return "\n".join(lines)

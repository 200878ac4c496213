"""Streaming end-to-end FPS vs the same engine's model-only throughput, side by side, plus a per-stage
profile of where a frame's host time goes.

    .venv/bin/python benchmarks/streaming/measure.py --bundle runs/default/bundle.tar \
        --engine openvino-int8 --images data/synth/images --glob 'val_*' --rounds 3

Per round, back to back on the same cores: model-only throughput (``edgefpn.pipeline.benchmark._throughput``,
the benchmark stage's own measure: THROUGHPUT hint, async requests, one preprocessed val image), then
the streaming runtime on the val video at the deploy threshold and at the eval threshold. The ratio is
taken per round and the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from edgefpn.backends.base import INPUT_NAME
from edgefpn.pipeline.benchmark import _throughput
from edgefpn.runtime import BundleSession, FrameStages, open_runner
from edgefpn.runtime.scenario import measure_streaming, with_score_thresh, write_video


def _cpu_s() -> float:
    """This process's CPU time (user + system, every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _model_only_cpu(compiled, feed: dict, seconds: float) -> dict[str, float]:
    """_throughput's loop (AsyncInferQueue, optimal requests, one fixed input) on ``compiled``, with the
    CPU time it used per inference: on a shared machine, CPU per frame is what a dedicated one turns
    into FPS, while wall-clock FPS follows whatever else runs (a pipeline with more threads gets a
    larger share of an oversubscribed CPU)."""
    import openvino as ov

    nireq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, nireq)
    for _ in range(nireq):
        queue.start_async(feed)
    queue.wait_all()
    done, c0, t0 = 0, _cpu_s(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        queue.start_async(feed)
        done += 1
    queue.wait_all()
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {"fps": round(done / wall, 2), "cpu_ms_per_frame": round(cpu / done * 1e3, 3)}


def _stream_cpu(stages, video: Path, threads: int, requests) -> dict:
    c0 = _cpu_s()
    r = measure_streaming(stages, video, threads=threads, requests=requests)
    return r | {"cpu_ms_per_frame": round((_cpu_s() - c0) / r["frames"] * 1e3, 3)}


def _profile(stages, video: Path, eval_thresh: float) -> dict[str, float]:
    """Mean ms per frame of each stage, run one after another on this thread (no overlap): CPU time of
    this thread for the host stages (a video decoder with one thread decodes on the calling thread),
    wall time for the engine call (its work runs on the engine's own threads)."""
    import cv2

    cap = cv2.VideoCapture(str(video), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])  # as CaptureSource opens it
    names = (
        "video_read_cpu",
        "bgr_to_rgb_cpu",
        "prepare_cpu",
        "infer_wall",
        "decode_deploy_cpu",
        "decode_eval_cpu",
    )
    t = {k: [] for k in names}
    ev = with_score_thresh(stages, eval_thresh)
    clock = time.thread_time
    while True:
        c0 = clock()
        ok, bgr = cap.read()
        c1 = clock()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        c2 = clock()
        x, lb = stages.prepare(rgb)
        c3 = clock()
        w0 = time.perf_counter()
        out = stages.infer(x)
        w1 = time.perf_counter()
        c4 = clock()
        stages.decode(out, [lb])
        c5 = clock()
        ev.decode(out, [lb])
        c6 = clock()
        for k, v in zip(names, (c1 - c0, c2 - c1, c3 - c2, w1 - w0, c5 - c4, c6 - c5), strict=True):
            t[k].append(v * 1e3)
    cap.release()
    return {k: round(float(np.mean(v)), 3) for k, v in t.items()}


@contextlib.contextmanager
def _session(args: argparse.Namespace):
    """A BundleSession, or the same attributes (spec, prepost, stages) for an engine of a run directory."""
    if args.bundle is not None:
        with BundleSession(args.bundle, engine=args.engine, threads=args.threads) as s:
            yield s
        return
    from edgefpn.backends.base import EngineSpec
    from edgefpn.config import load_config
    from edgefpn.pipeline.common import make_prepost

    backend, precision = args.engine.split("-")
    rel = "model.onnx" if backend == "onnxruntime" else f"{backend}/{precision}"
    spec = EngineSpec(args.engine, backend, precision, args.run_dir / rel)
    prepost = make_prepost(load_config(args.config, []), deploy=True)
    with open_runner(spec, threads=args.threads) as runner:
        yield types.SimpleNamespace(spec=spec, prepost=prepost, stages=FrameStages(prepost, runner))


def main() -> None:
    p = argparse.ArgumentParser()
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="a bundle made by `edgefpn package`")
    src.add_argument("--run-dir", type=Path, help="or a run directory's engine (thresholds from --config)")
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--engine", default="openvino-int8")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--glob", default="val_*")
    p.add_argument("--eval-score-thresh", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()

    paths = sorted(args.images.glob(args.glob))
    with tempfile.TemporaryDirectory() as tmp, _session(args) as s:
        video = Path(tmp) / "val.avi"
        write_video(paths, video)
        stages = s.stages
        feed = {
            INPUT_NAME: stages.prepare(
                np.asarray(__import__("PIL.Image").Image.open(paths[0]).convert("RGB"))
            )[0]
        }
        profile = _profile(stages, video, args.eval_score_thresh)
        rounds = []
        with open_runner(s.spec, threads=args.threads, hint="throughput") as tp_runner:
            tp_stages = FrameStages(s.prepost, tp_runner)
            for _ in range(args.rounds):
                tp = _throughput(s.spec, feed, args.threads, args.seconds, 0.0)
                mo = _model_only_cpu(tp_runner.compiled, feed, args.seconds)
                dep = _stream_cpu(tp_stages, video, args.threads, args.requests)
                ev = _stream_cpu(
                    with_score_thresh(tp_stages, args.eval_score_thresh), video, args.threads, args.requests
                )
                rounds.append(
                    {
                        "throughput_fps": tp["fps"],
                        "throughput": tp,
                        "model_only_cpu": mo,
                        "deploy": dep,
                        "eval": ev,
                        "ratio_deploy": round(dep["fps"] / tp["fps"], 3),
                        "ratio_eval": round(ev["fps"] / tp["fps"], 3),
                        "cpu_ratio_deploy": round(mo["cpu_ms_per_frame"] / dep["cpu_ms_per_frame"], 3),
                        "cpu_ratio_eval": round(mo["cpu_ms_per_frame"] / ev["cpu_ms_per_frame"], 3),
                    }
                )
                print(
                    json.dumps(
                        {
                            k: rounds[-1][k]
                            for k in (
                                "throughput_fps",
                                "ratio_deploy",
                                "ratio_eval",
                                "cpu_ratio_deploy",
                                "cpu_ratio_eval",
                            )
                        }
                        | {
                            "deploy_fps": dep["fps"],
                            "eval_fps": ev["fps"],
                            "cpu_ms": [
                                mo["cpu_ms_per_frame"],
                                dep["cpu_ms_per_frame"],
                                ev["cpu_ms_per_frame"],
                            ],
                        }
                    ),
                    flush=True,
                )
    result = {
        "engine": args.engine,
        "frames": len(paths),
        "threads": args.threads,
        "requests": args.requests,
        "profile_ms_per_frame": profile,
        "rounds": rounds,
        **(
            {}
            if not rounds
            else {
                "median_ratio_deploy": statistics.median(r["ratio_deploy"] for r in rounds),
                "median_ratio_eval": statistics.median(r["ratio_eval"] for r in rounds),
                "median_cpu_ratio_deploy": statistics.median(r["cpu_ratio_deploy"] for r in rounds),
                "median_cpu_ratio_eval": statistics.median(r["cpu_ratio_eval"] for r in rounds),
            }
        ),
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

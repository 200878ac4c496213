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
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgefpn.backends.base import INPUT_NAME
from edgefpn.pipeline.benchmark import _throughput
from edgefpn.runtime import BundleSession, FrameStages, open_runner
from edgefpn.runtime.scenario import measure_streaming, with_score_thresh, write_video


def _profile(stages, video: Path, eval_thresh: float) -> dict[str, float]:
    """Mean ms per frame of each stage, run one after another on one thread (no overlap)."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    t = {"video_read": [], "bgr_to_rgb": [], "prepare": [], "infer": [], "decode_deploy": [], "decode_eval": []}
    ev = with_score_thresh(stages, eval_thresh)
    while True:
        t0 = time.perf_counter()
        ok, bgr = cap.read()
        t1 = time.perf_counter()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        t2 = time.perf_counter()
        x, lb = stages.prepare(rgb)
        t3 = time.perf_counter()
        out = stages.infer(x)
        t4 = time.perf_counter()
        stages.decode(out, [lb])
        t5 = time.perf_counter()
        ev.decode(out, [lb])
        t6 = time.perf_counter()
        for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
            t[k].append(v * 1e3)
    cap.release()
    return {k: round(float(np.mean(v)), 3) for k, v in t.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", type=Path, required=True)
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
    with tempfile.TemporaryDirectory() as tmp, BundleSession(args.bundle, engine=args.engine,
                                                              threads=args.threads) as s:
        video = Path(tmp) / "val.avi"
        write_video(paths, video)
        stages = s.stages
        feed = {INPUT_NAME: stages.prepare(np.asarray(__import__("PIL.Image").Image.open(paths[0]).convert("RGB")))[0]}
        profile = _profile(stages, video, args.eval_score_thresh)
        rounds = []
        with open_runner(s.spec, threads=args.threads, hint="throughput") as tp_runner:
            tp_stages = FrameStages(s.pipeline, tp_runner)
            for _ in range(args.rounds):
                tp = _throughput(s.spec, feed, args.threads, args.seconds, 0.0)
                dep = measure_streaming(tp_stages, video, threads=args.threads, requests=args.requests)
                ev = measure_streaming(with_score_thresh(tp_stages, args.eval_score_thresh), video,
                                       threads=args.threads, requests=args.requests)
                lat = measure_streaming(stages, video, threads=args.threads, requests=2)  # latency hint
                rounds.append({"throughput_fps": tp["fps"], "throughput": tp, "deploy": dep, "eval": ev,
                               "deploy_latency_hint": lat,
                               "ratio_deploy": round(dep["fps"] / tp["fps"], 3),
                               "ratio_eval": round(ev["fps"] / tp["fps"], 3),
                               "ratio_deploy_latency_hint": round(lat["fps"] / tp["fps"], 3)})
                print(json.dumps({k: rounds[-1][k] for k in ("throughput_fps", "ratio_deploy", "ratio_eval",
                                                              "ratio_deploy_latency_hint")}
                                 | {"deploy_fps": dep["fps"], "eval_fps": ev["fps"]}), flush=True)
    result = {"engine": args.engine, "frames": len(paths), "threads": args.threads, "requests": args.requests,
              "profile_ms_per_frame": profile, "rounds": rounds,
              "median_ratio_deploy": statistics.median(r["ratio_deploy"] for r in rounds),
              "median_ratio_eval": statistics.median(r["ratio_eval"] for r in rounds),
              "median_ratio_deploy_latency_hint": statistics.median(r["ratio_deploy_latency_hint"] for r in rounds),
              "loadavg": os.getloadavg()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

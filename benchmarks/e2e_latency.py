"""Where the end-to-end time goes: image file -> preprocess -> infer -> decode, split per step.

Interleaves, per iteration, one model-only call on a fixed input with one end-to-end call on the next
val image at the deployment score threshold and one at the evaluation threshold (the same steps as
:func:`edgefpn.inference.detect_file`, timed one by one), so all depths see the same machine noise on
a shared CPU. Prints medians and the e2e / model-only ratios.

    .venv/bin/python benchmarks/e2e_latency.py --run runs/default [--engine openvino-int8] \
        [--iters 400] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from edgefpn.backends import open_runner
from edgefpn.backends.base import INPUT_NAME
from edgefpn.config import load_config
from edgefpn.data.coco import load_split
from edgefpn.pipeline.check import discover_engines
from edgefpn.pipeline.common import make_prepost

STEPS = ("read_and_prepare", "infer", "decode")


def measure(run_dir: Path, engine: str, iters: int, threads: int, config: str | None) -> dict:
    cfg = load_config(config, [])
    pipes = {"deploy": make_prepost(cfg, deploy=True), "eval": make_prepost(cfg)}
    split = load_split(Path(cfg.data.root), cfg.data.val_split)
    paths = [r.path for r in split.images]
    spec = next((e for e in discover_engines(run_dir, cfg.check.backends) if e.name == engine), None)
    if spec is None:
        raise SystemExit(f"{run_dir}: no engine {engine!r}")
    model_only: list[float] = []
    steps = {k: {s: [] for s in (*STEPS, "e2e")} for k in pipes}
    found = {k: 0 for k in pipes}
    with open_runner(spec, threads=threads) as runner:
        batch, _ = pipes["eval"].prepare_file(paths[0])
        feed = {INPUT_NAME: batch}
        for _ in range(10):
            runner.infer(feed)
        for i in range(iters):
            t0 = time.perf_counter()
            runner.infer(feed)
            model_only.append(time.perf_counter() - t0)
            for key, pipe in pipes.items():
                t = [time.perf_counter()]
                batch, lb = pipe.prepare_file(paths[i % len(paths)])  # JPEG decode, resize, normalise
                t.append(time.perf_counter())
                outputs = runner.infer({INPUT_NAME: batch})
                t.append(time.perf_counter())
                det = pipe.decode(outputs, [lb])[0]
                t.append(time.perf_counter())
                for name, a, b in zip(STEPS, t, t[1:], strict=False):
                    steps[key][name].append(b - a)
                steps[key]["e2e"].append(t[-1] - t[0])
                found[key] += len(det)

    def ms(v: list[float]) -> float:
        return round(statistics.median(v) * 1e3, 3)

    mo = ms(model_only)
    result = {"engine": engine, "iters": iters, "threads": threads, "model_only_ms": mo}
    for key, pipe in pipes.items():
        med = {k: ms(v) for k, v in steps[key].items()}
        result[key] = {
            "score_thresh": pipe.post.score_thresh,
            "median_ms": med,
            "e2e_over_model_only": round(med["e2e"] / mo, 3),
            "detections_per_image": round(found[key] / iters, 1),
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/default"))
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--engine", default="openvino-int8")
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = measure(args.run, args.engine, args.iters, args.threads, args.config)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

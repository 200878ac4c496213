"""Paired model-only speed of a run's ONNX Runtime engines, with check's own rule
(edgefpn.checking.latency.int8_speedups).

    .venv/bin/python benchmarks/ort_int8/paired.py RUN_DIR [PAIRS] [KEY=VALUE ...]

Times model.int8.ort.onnx (the onnxruntime-int8 engine) and model.int8.onnx (the TensorRT-shaped
symmetric QDQ) each against model.onnx in interleaved pairs and prints the median per-pair speedups.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from edgefpn.backends import EngineSpec, open_runner
from edgefpn.checking.latency import int8_speedups
from edgefpn.config import load_config
from edgefpn.pipeline import data as data_stage
from edgefpn.pipeline.common import make_prepost


def main(argv: list[str]) -> None:
    run_dir = Path(argv[0])
    pairs = int(argv[1]) if len(argv) > 1 and "=" not in argv[1] else 200
    overrides = [a for a in argv[1:] if "=" in a]  # config overrides, as --set takes them
    cfg = load_config(Path("configs/default.yaml"), [*overrides, f"check.latency_iters={pairs}"])
    records = data_stage.run(cfg, progress=False).split(cfg.data.val_split).images
    fp32 = EngineSpec("onnxruntime-fp32", "onnxruntime", "fp32", run_dir / "model.onnx")
    for name, file in (
        ("u8s8 (model.int8.ort.onnx)", "model.int8.ort.onnx"),
        ("symmetric (model.int8.onnx)", "model.int8.onnx"),
    ):
        int8 = EngineSpec("onnxruntime-int8", "onnxruntime", "int8", run_dir / file)
        with contextlib.ExitStack() as stack:
            runners = {
                s.name: stack.enter_context(open_runner(s, threads=cfg.run.threads)) for s in (fp32, int8)
            }
            s = int8_speedups(runners, [fp32, int8], make_prepost(cfg), records, cfg)["onnxruntime-int8"]
        print(
            f"{name:30s} int8 p50 {s['p50_ms']:6.2f} ms  fp32 p50 {s['vs_p50_ms']:6.2f} ms  "
            f"speedup {s['speedup']:.2f}x over {s['pairs']} pairs  (load {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

"""ORT INT8 flavour on a run dir without a whole `check`: mAP on val and paired speed vs FP32.

    .venv/bin/python benchmarks/ort_int8/measure.py RUN_DIR [PAIRS] [KEY=VALUE ...]

Writes RUN_DIR/bench-int8-ort.onnx with the product quantizer (edgefpn.quantize.ort_cpu) from the run's
calibration cache and the nodes model.int8.onnx kept in float, measures its COCO mAP on the val split
with the quantize stage's Evaluator (the PyTorch reference mAP is read from model.int8.onnx's manifest,
measured the same way), then times it and model.int8.onnx against model.onnx with check's paired rule.
For when a whole check does not fit the time (a loaded machine); `edgefpn check` does all of this.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from edgefpn.backends import EngineSpec, open_runner
from edgefpn.checking.latency import int8_speedups
from edgefpn.config import load_config
from edgefpn.pipeline import data as data_stage
from edgefpn.pipeline.common import make_prepost
from edgefpn.quantize.accuracy import Evaluator
from edgefpn.quantize.ort_cpu import check_qdq_ort, quantize_qdq_ort


def main(argv: list[str]) -> None:
    import onnx

    run_dir = Path(argv[0])
    pairs = int(argv[1]) if len(argv) > 1 and "=" not in argv[1] else 200
    cfg = load_config(
        Path("configs/default.yaml"), [*(a for a in argv[1:] if "=" in a), f"check.latency_iters={pairs}"]
    )
    sym = json.loads((run_dir / "model.int8.onnx.manifest.json").read_text())
    out = run_dir / "bench-int8-ort.onnx"
    t0 = time.perf_counter()
    quantize_qdq_ort(
        run_dir / "model.onnx",
        out,
        Path(sym["calibration"]["cache"]),
        sym["method"],
        exclude=sym["exclude_nodes"],
    )
    print(
        f"quantized in {time.perf_counter() - t0:.1f} s; problems: "
        f"{check_qdq_ort(onnx.load(str(out)), sym['exclude_nodes'])}"
    )
    data = data_stage.run(cfg, progress=False)
    split = data.split(cfg.data.val_split)
    ev = Evaluator(
        make_prepost(cfg),
        split.images,
        split.category_ids,
        data.ann_file(cfg.data.val_split),
        threads=cfg.run.threads,
    )
    ref = sym["accuracy"]["reference_map"]
    m = ev.map_of(ev.detect(EngineSpec("onnxruntime-int8", "onnxruntime", "int8", out)))
    print(
        f"mAP on {len(split.images)} val images: PyTorch {ref:.3f}, symmetric QDQ "
        f"{sym['accuracy']['int8_map']:.3f}, "
        f"u8s8 QDQ {m:.3f} (drop {ref - m:.3f}, budget {cfg.quantize.max_map_drop})"
    )
    fp32 = EngineSpec("onnxruntime-fp32", "onnxruntime", "fp32", run_dir / "model.onnx")
    for name, path in (
        ("u8s8 (ORT flavour)", out),
        ("symmetric (TensorRT flavour)", run_dir / "model.int8.onnx"),
    ):
        int8 = EngineSpec("onnxruntime-int8", "onnxruntime", "int8", path)
        with contextlib.ExitStack() as stack:
            runners = {
                s.name: stack.enter_context(open_runner(s, threads=cfg.run.threads)) for s in (fp32, int8)
            }
            s = int8_speedups(runners, [fp32, int8], make_prepost(cfg), split.images, cfg)["onnxruntime-int8"]
        print(
            f"{name:30s} int8 p50 {s['p50_ms']:6.2f} ms  fp32 p50 {s['vs_p50_ms']:6.2f} ms  "
            f"speedup {s['speedup']:.2f}x (median of {s['pairs']} interleaved pairs)  load "
            f"{os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

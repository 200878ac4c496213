"""Paired, interleaved: the in-graph engine end to end vs its raw twin model-only, in one process.

    .venv/bin/python benchmarks/e2e/paired.py RUN_DIR ENGINE [PAIRS [BLOCK [DATA_ROOT]]]
    (ENGINE: e.g. openvino-int8)

check times engines one after another, so on a loaded machine two engines' figures come from different
minutes; here each pair is (raw twin: one model-only call on a fixed val image) then (ENGINE-e2e: one
image file -> detections call, deploy threshold), alternating, and the ratio of the medians is printed.
Settings as the run: --set keys of benchmarks/e2e/measure.sh.

BLOCK (default 1) alternates blocks of BLOCK calls instead of single calls: two compiled OpenVINO models
called in strict alternation each find the cores, caches and thread pool as the other left them, which
adds to both (measured: see README.md); blocks of 25 still see the same minutes of a shared machine.

DATA_ROOT (default: the config's data.root) reads the val images from another copy of the dataset, e.g.
the same pixels stored with other JPEG settings (README.md).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from edgefpn.backends import EngineSpec, open_runner
from edgefpn.config import load_config
from edgefpn.data.coco import load_split
from edgefpn.inference import detect_file
from edgefpn.pipeline import e2e as e2e_stage
from edgefpn.pipeline.check import ENGINE_FILES
from edgefpn.pipeline.common import make_prepost, recorded_arch

SETS = ["export.input=uint8", "export.nms=true"]


def main(run_dir: Path, raw: str, pairs: int, block: int = 1, data_root: str | None = None) -> None:
    cfg = load_config(Path("configs/default.yaml"), SETS + ([f"data.root={data_root}"] if data_root else []))
    files = {n: (b, p, run_dir / rel) for n, b, p, rel in ENGINE_FILES}
    arch = recorded_arch(cfg, run_dir)
    pipe = make_prepost(cfg, arch=arch, deploy=True)
    e2e_pipe = e2e_stage.in_contract(pipe, cfg, f"{raw}-e2e")
    paths = [im.path for im in load_split(cfg.data.root, cfg.data.val_split).images]
    batch, _ = pipe.prepare_file(paths[0])
    model_only, end_to_end, raw_e2e = [], [], []
    with (
        open_runner(EngineSpec(raw, *files[raw]), threads=cfg.run.threads) as r,
        open_runner(EngineSpec(f"{raw}-e2e", *files[f"{raw}-e2e"]), threads=cfg.run.threads) as e,
    ):
        jobs = (
            (model_only, lambda i: r.infer({"images": batch})),
            (end_to_end, lambda i: detect_file(e, e2e_pipe, paths[i % len(paths)])),
            (raw_e2e, lambda i: detect_file(r, pipe, paths[i % len(paths)])),  # the raw contract's job
        )
        for _samples, call in jobs:  # warm-up, dropped
            for i in range(10):
                call(i)
        for start in range(0, pairs, block):
            for samples, call in jobs:
                for i in range(start, min(start + block, pairs)):
                    t0 = time.perf_counter()
                    call(i)
                    samples.append((time.perf_counter() - t0) * 1e3)
    mo, ee = statistics.median(model_only), statistics.median(end_to_end)
    print(
        f"{pairs} interleaved pairs (blocks of {block}): {raw} model-only p50 {mo:.2f} ms; "
        f"{raw}-e2e end-to-end p50 {ee:.2f} ms "
        f"(image file -> detections, score > {pipe.post.score_thresh}); ratio {ee / mo:.2f}x; raw contract "
        f"end to end {statistics.median(raw_e2e):.2f} ms ({statistics.median(raw_e2e) / mo:.2f}x)"
    )


if __name__ == "__main__":
    main(
        Path(sys.argv[1]),
        sys.argv[2],
        int(sys.argv[3]) if len(sys.argv) > 3 else 200,
        int(sys.argv[4]) if len(sys.argv) > 4 else 1,
        sys.argv[5] if len(sys.argv) > 5 else None,
    )

"""Calibration wall time and peak memory, each count measured in a fresh process.

Model: FCOS resnet18, fpn_channels 64, head_convs 2, 320x320, random weights (exported and slimmed as
the export stage does). Data: the built-in synthetic generator's calib split. Threads: run.threads=2.

    .venv/bin/python benchmarks/calibration.py            # writes benchmarks/calibration.{json,md}
    .venv/bin/python benchmarks/calibration.py --counts 100 300 1000 --methods minmax percentile

Peak RSS is read in a child process per (method, count) from ``/proc/self/status`` ``VmHWM`` (falling
back to ``ru_maxrss``): ``ru_maxrss`` survives ``execve`` on Linux, so a child started by a big parent
would report the parent's peak. The data and model are made in a child too, so the parent stays
small. "growth" is peak(1000) - peak(100) for the same method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIME_TARGET_S = 120.0  # 300 images
GROWTH_TARGET_MB = 1024.0  # 100 -> 1000 images


def _prepare(work: Path, num_calib: int) -> tuple[Path, Path]:
    import onnx
    import onnxslim
    import torch

    from edgefpn.data.synth import generate
    from edgefpn.models.export import export_onnx
    from edgefpn.models.fcos import FCOSExportWrapper
    from edgefpn.models.registry import build_model

    data = work / "data"
    generate(data, num_train=0, num_val=2, num_calib=num_calib, seed=0, show_progress=False)
    torch.manual_seed(0)
    model = build_model(
        arch="fcos", num_classes=7, backbone_name="resnet18", fpn_channels=64, head_convs=2
    ).eval()
    path = work / "model.onnx"
    export_onnx(FCOSExportWrapper(model).eval(), path, input_size=(320, 320), batch=1, opset=17)
    onnx.save(onnxslim.slim(onnx.load(str(path))), str(path))
    return data, path


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(data: Path, model: Path, count: int, method: str, cache: Path) -> dict:
    from edgefpn.artifacts import sha256_file
    from edgefpn.calibration import CalibrationSet, calibrate
    from edgefpn.config import load_config

    cfg = load_config(
        None,
        [
            f"data.root={data}",
            "data.builtin=false",
            f"quantize.num_images={count}",
            f"quantize.method={method}",
            "run.threads=2",
        ],
    )
    calib = CalibrationSet(cfg)
    before_mb = _peak_rss_mb()
    t0 = time.perf_counter()
    res = calibrate(cfg, model, sha256_file(model), calib, cache, threads=2, log=lambda m: None)
    seconds = time.perf_counter() - t0
    peak_mb = _peak_rss_mb()
    return {
        "method": method,
        "images": len(calib),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(calib) / seconds, 2),
        "peak_rss_mb": round(peak_mb, 1),
        "rss_before_calibration_mb": round(before_mb, 1),
        "reused_cache": res.reused,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--methods", nargs="+", default=["minmax"])
    ap.add_argument("--child", nargs=4, metavar=("DATA", "MODEL", "COUNT", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument("--prepare", nargs=2, metavar=("WORK", "COUNT"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "calibration.json")
    args = ap.parse_args()
    if args.prepare:
        _prepare(Path(args.prepare[0]), int(args.prepare[1]))
        return
    if args.child:
        data, model, count, method = args.child
        with tempfile.TemporaryDirectory() as cache:  # a fresh cache: always a real calibration pass
            print(json.dumps(_child(Path(data), Path(model), int(count), method, Path(cache))))
        return

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    with tempfile.TemporaryDirectory(prefix="edgefpn-bench-") as tmp:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--prepare", tmp, str(max(args.counts))],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        data, model = Path(tmp) / "data", Path(tmp) / "model.onnx"
        print(
            f"prepared {max(args.counts)} synthetic calib images + model in {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
        runs = []
        for method in args.methods:
            for count in args.counts:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(data), str(model), str(count), method],
                    check=True,
                    capture_output=True,
                    text=True,
                    env=env,
                )
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), file=sys.stderr)

    summary = {}
    for method in args.methods:
        by = {r["images"]: r for r in runs if r["method"] == method}
        entry = {}
        if 300 in by:
            entry["seconds_300"] = by[300]["seconds"]
            entry["time_target_met"] = by[300]["seconds"] < TIME_TARGET_S
        if 100 in by and 1000 in by:
            entry["peak_growth_100_to_1000_mb"] = round(by[1000]["peak_rss_mb"] - by[100]["peak_rss_mb"], 1)
            entry["memory_target_met"] = entry["peak_growth_100_to_1000_mb"] < GROWTH_TARGET_MB
        summary[method] = entry
    result = {
        "schema": "edgefpn.bench.calibration/1",
        "model": "fcos resnet18 fpn64 head_convs2 320x320 (random weights, slimmed)",
        "threads": 2,
        "targets": {"seconds_300": TIME_TARGET_S, "peak_growth_mb": GROWTH_TARGET_MB},
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        },
        "runs": runs,
        "summary": summary,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(r: dict) -> str:
    lines = [
        "# Calibration benchmark",
        "",
        f"Model: {r['model']}; threads: {r['threads']}; "
        f"machine: {r['machine']['cpu']}, {r['machine']['cores']} cores.",
        "",
        "Each row is a fresh process (peak RSS is `VmHWM` of that process, which includes the "
        "~50 MB of imports).",
        "",
        "| method | images | seconds | images/s | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for x in r["runs"]:
        lines.append(
            f"| {x['method']} | {x['images']} | {x['seconds']} | {x['images_per_s']} | {x['peak_rss_mb']} |"
        )
    lines += [
        "",
        f"Targets: < {r['targets']['seconds_300']:.0f} s for 300 images; "
        f"< {r['targets']['peak_growth_mb']:.0f} MB peak growth from 100 to 1000 images.",
        "",
    ]
    for method, s in r["summary"].items():
        parts = []
        if "seconds_300" in s:
            parts.append(
                f"300 images in {s['seconds_300']} s ({'met' if s['time_target_met'] else 'MISSED'})"
            )
        if "peak_growth_100_to_1000_mb" in s:
            parts.append(
                f"peak growth 100->1000: {s['peak_growth_100_to_1000_mb']} MB "
                f"({'met' if s['memory_target_met'] else 'MISSED'})"
            )
        lines.append(f"- {method}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""FPN vs AugFPN for each detector, on the built-in synthetic dataset with one training budget.

Each row is one ``edgefpn run`` (data -> train -> export -> check, with check restricted to ONNX
Runtime FP32 and quantize/build off) in its own run directory under ``--out``; every row shares the
dataset and every setting except ``model.arch`` and ``model.neck``. The table then reads each row's
``report.json`` (PyTorch mAP, ONNX Runtime FP32 mAP and its delta, GFLOPs) and ``model.pt``
(parameters, training seconds), and measures CPU latency for all rows side by side in this one
process: ONNX Runtime, model only, batch 1, ``run.threads`` threads, the rows' sessions interleaved
round-robin so that machine load falls on every row alike.

    .venv/bin/python benchmarks/zoo.py                       # all rows -> benchmarks/zoo.{md,json}
    .venv/bin/python benchmarks/zoo.py --archs fcos --epochs 1 --num-train 64 --table /tmp/t  # smoke
    make bench-zoo

A row whose ``edgefpn run`` fails (e.g. the FP32 gate of ``check``) is kept in the table with its
exit code and whatever its report holds; the script exits 1 if any row failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARCHS = ("fcos", "retinanet", "faster_rcnn")
NECKS = ("fpn", "augfpn")

INPUT_SIZE = 192
# The one budget every row gets: the default config's slim ResNet-18 (width 32, FPN 64, 2 head
# convs) at 192x192, trained from scratch for a few epochs on 1000 synthetic images.
BUDGET = (
    "model.backbone=resnet18",
    "model.backbone_width=32",
    "model.fpn_channels=64",
    "model.head_convs=2",
    f"model.input_size=[{INPUT_SIZE},{INPUT_SIZE}]",
    "data.synth.min_side=160",
    "data.synth.max_side=240",
    "train.eval_every=0",
    "quantize.enabled=false",
    "build.targets=[]",
    "check.backends=[onnxruntime]",
    "check.latency_iters=20",
    "check.warmup=3",
)
# Per-architecture settings, the same for both necks. Faster R-CNN: 300 RPN candidates per level and
# 100 proposals (a synthetic image holds at most 8 objects) and a 256-wide box head; torchvision's
# 1000 / 1000 / 1024 would make its box head alone ~6 GFLOPs at this input size.
ARCH_OVERRIDES = {
    "faster_rcnn": (
        "model.representation_size=256",
        "model.rpn.pre_nms_top_n=300",
        "model.rpn.post_nms_top_n=100",
    ),
}


def _row_overrides(args: argparse.Namespace, arch: str, neck: str) -> list[str]:
    return [
        *BUDGET,
        *ARCH_OVERRIDES.get(arch, ()),
        f"data.root={args.out / 'data'}",
        f"data.synth.num_train={args.num_train}",
        f"data.synth.num_val={args.num_val}",
        "data.synth.num_calib=8",  # generated with the dataset; unused (quantize is off)
        f"train.epochs={args.epochs}",
        f"run.seed={args.seed}",
        f"model.arch={arch}",
        f"model.neck={neck}",
    ]


def _run_row(args: argparse.Namespace, arch: str, neck: str) -> dict[str, Any]:
    run_dir = args.out / f"{arch}-{neck}"
    cmd = [
        str(ROOT / ".venv/bin/edgefpn"),
        "run",
        "--config",
        str(args.config),
        "--out",
        str(run_dir),
        "--quiet",
    ]
    for item in _row_overrides(args, arch, neck):
        cmd += ["--set", item]
    print(f"[zoo] {arch}/{neck}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "zoo.log").write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    print(
        f"[zoo] {arch}/{neck}: exit {proc.returncode} in {seconds:.0f} s "
        f"{tail[0] if proc.returncode else ''}",
        flush=True,
    )
    return {
        "arch": arch,
        "neck": neck,
        "run_dir": str(run_dir),
        "exit_code": proc.returncode,
        "run_seconds": round(seconds, 1),
        "command": shlex.join(cmd),
    }


def _read_row(row: dict[str, Any]) -> dict[str, Any]:
    from edgefpn.models.loading import model_from_checkpoint

    run_dir = Path(row["run_dir"])
    report_path = run_dir / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        ort = next((e for e in report["engines"] if e["name"] == "onnxruntime-fp32"), None)
        row["map_torch"] = report["reference"]["map"]
        row["map50_torch"] = report["reference"]["map50"]
        row["map_ort"] = ort["map"] if ort else None
        row["map_delta"] = ort["map_delta"] if ort else None
        row["gates_passed"] = bool(ort and ort["gates"]["passed"])
        row["gflops"] = report["flops"]["gflops_per_image"]
        row["val_images"] = report["dataset"]["images"]
    if (run_dir / "model.pt").is_file():
        model, meta = model_from_checkpoint(run_dir / "model.pt")
        row["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
        row["train_seconds"] = meta.get("train", {}).get("seconds")
        del model
    return row


def _latency(rows: list[dict[str, Any]], *, threads: int, rounds: int, iters: int, warmup: int) -> None:
    """Model-only ORT latency of every row, measured interleaved: ``rounds`` x (``iters`` per row)."""
    import numpy as np

    from edgefpn.backends import EngineSpec, open_runner
    from edgefpn.backends.base import INPUT_NAME

    live = [r for r in rows if (Path(r["run_dir"]) / "model.onnx").is_file()]
    runners, feeds, samples = {}, {}, {}
    for row in live:
        path = Path(row["run_dir"]) / "model.onnx"
        runner = open_runner(EngineSpec("onnxruntime-fp32", "onnxruntime", "fp32", path), threads=threads)
        runner.__enter__()
        key = (row["arch"], row["neck"])
        runners[key] = runner
        shape = _input_shape(path)
        feeds[key] = {INPUT_NAME: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        samples[key] = []
        for _ in range(warmup):
            runner.infer(feeds[key])
    try:
        for _ in range(rounds):
            for key, runner in runners.items():
                for _ in range(iters):
                    t0 = time.perf_counter()
                    runner.infer(feeds[key])
                    samples[key].append((time.perf_counter() - t0) * 1e3)
    finally:
        for runner in runners.values():
            runner.__exit__(None, None, None)
    for row in live:
        s = np.asarray(samples[(row["arch"], row["neck"])])
        row["latency_ms"] = {
            "p50": round(float(np.median(s)), 3),
            "p90": round(float(np.percentile(s, 90)), 3),
            "samples": int(s.size),
        }


def _input_shape(path: Path) -> list[int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def render_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# FPN vs AugFPN on the built-in synthetic dataset",
        "",
        f"One training budget for every row: {s['epochs']} epochs on {s['num_train']} images at "
        f"{s['input_size']} px, seed {s['seed']}, `{s['config']}` plus the overrides below; mAP on "
        f"{s['num_val']} val images. Latency: ONNX Runtime FP32, model only, batch 1, {s['threads']} "
        f"threads, all rows interleaved in one process ({s['latency_rounds']} rounds x "
        f"{s['latency_iters']} calls per row).",
        "",
        "| arch | neck | mAP (PyTorch) | mAP (ORT FP32) | ORT delta | params (M) | GFLOPs | ORT p50 ms | "
        "latency vs FPN | train s* | `edgefpn run` |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_key = {(r["arch"], r["neck"]): r for r in result["rows"]}
    for r in result["rows"]:
        base = by_key.get((r["arch"], "fpn"))
        ratio = None
        if base and r.get("latency_ms") and base.get("latency_ms"):
            ratio = r["latency_ms"]["p50"] / base["latency_ms"]["p50"]
        status = "ok" if r["exit_code"] == 0 else f"exit {r['exit_code']}"
        lines.append(
            f"| {r['arch']} | {r['neck']} | {_fmt(r.get('map_torch'), '.2f')} | "
            f"{_fmt(r.get('map_ort'), '.2f')} | "
            f"{_fmt(r.get('map_delta'), '+.3f')} | {_fmt(r.get('params_m'), '.3f')} | "
            f"{_fmt(r.get('gflops'), '.3f')} | "
            f"{_fmt((r.get('latency_ms') or {}).get('p50'), '.2f')} | {_fmt(ratio, '.2f')}x | "
            f"{_fmt(r.get('train_seconds'), '.0f')} | {status} |"
        )
    lines += ["", "AugFPN minus FPN, per detector (AP points, PyTorch):", ""]
    for arch in dict.fromkeys(r["arch"] for r in result["rows"]):
        fpn, aug = by_key.get((arch, "fpn"), {}), by_key.get((arch, "augfpn"), {})
        if fpn.get("map_torch") is not None and aug.get("map_torch") is not None:
            lines.append(
                f"- {arch}: {aug['map_torch'] - fpn['map_torch']:+.2f} AP "
                f"({fpn['map_torch']:.2f} -> {aug['map_torch']:.2f})"
            )
    lines += [
        "",
        "*train s: wall seconds of the training stage, rows run one after another (not side by side: only "
        "a rough cost indication; the latency columns are the side-by-side measurement).",
        "",
        "The AugFPN paper reports +0.9 to +2.3 AP on COCO with ImageNet-pretrained ResNets and 12+ epoch "
        "schedules; this table is a few from-scratch epochs of a slim ResNet-18 on synthetic shapes, with "
        "one seed per row, so differences of about one AP point are within run-to-run noise.",
        "",
        f"Overrides: `{' '.join(result['settings']['overrides'])}`",
        *(
            f"; {arch} also: `{' '.join(items)}`"
            for arch, items in result["settings"].get("arch_overrides", {}).items()
        ),
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['logical_cores']} logical cores; "
        f"{result['machine']['python']}; measured {result['measured_at']}.",
        "",
        "Reproduce: `make bench-zoo` (or `.venv/bin/python benchmarks/zoo.py`); per-row logs and reports "
        f"are in `{s['out']}/<arch>-<neck>/`.",
    ]
    return "\n".join(lines) + "\n"


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {"cpu": cpu, "logical_cores": os.cpu_count(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--necks", nargs="+", default=list(NECKS), choices=NECKS)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/default.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/zoo", help="run directories (one per row)")
    parser.add_argument("--table", type=Path, default=HERE / "zoo", help="writes TABLE.md and TABLE.json")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-rounds", type=int, default=5)
    parser.add_argument("--latency-iters", type=int, default=20)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()

    rows = [_run_row(args, arch, neck) for arch in args.archs for neck in args.necks]
    rows = [_read_row(r) for r in rows]
    _latency(rows, threads=args.threads, rounds=args.latency_rounds, iters=args.latency_iters, warmup=5)
    overrides = list(_row_overrides(args, "ARCH", "NECK"))
    arch_overrides = {arch: list(ARCH_OVERRIDES[arch]) for arch in args.archs if arch in ARCH_OVERRIDES}
    result = {
        "schema": "edgefpn.zoo/1",
        "settings": {
            "epochs": args.epochs,
            "num_train": args.num_train,
            "num_val": args.num_val,
            "seed": args.seed,
            "threads": args.threads,
            "input_size": INPUT_SIZE,
            "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
            "out": str(args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out),
            "latency_rounds": args.latency_rounds,
            "latency_iters": args.latency_iters,
            "overrides": [o for o in overrides if not o.startswith("data.root=")],
            "arch_overrides": arch_overrides,
        },
        "machine": _machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.table.with_suffix(".md").write_text(render_markdown(result))
    print(render_markdown(result))
    return 1 if any(r["exit_code"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Footprint of the device runtime: import time, start-up to first inference, installed size.

Compares a runtime-only venv (numpy, Pillow, OpenCV, onnxruntime, openvino + edgefpn installed ``--no-deps``)
with the full development ``.venv`` (torch, torchvision, ...), running the same bundle.

    .venv/bin/python benchmarks/runtime_footprint.py --bundle RUN_DIR/bundle.tar --images DIR \
        [--rt-venv /tmp/rt] [--repeats 3]

The runtime venv is made with uv from its cache if missing (``uv venv``, ``uv pip install --offline``).
Results: ``benchmarks/runtime_footprint.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_PACKAGES = ["numpy", "pillow", "opencv-python-headless", "onnxruntime", "openvino"]
IMPORT_SNIPPET = (
    "import time; t = time.perf_counter(); import edgefpn.runtime.__main__; "
    "import {backend}; print(time.perf_counter() - t)"
)


def make_runtime_venv(path: Path) -> None:
    uv = shutil.which("uv") or "uv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(path)], check=True)
    py = str(path / "bin" / "python")
    subprocess.run([uv, "pip", "install", "-q", "--offline", "--python", py, *RUNTIME_PACKAGES], check=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--offline", "--no-deps", "--python", py, str(ROOT)], check=True
    )


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def du_mib(path: Path) -> float:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return round(total / 2**20, 1)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def measure(python: Path, bundle: Path, images: Path, engine: str, repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    backend = engine.split("-")[0]
    imports, walls, firsts = [], [], []
    for _ in range(repeats):
        out = subprocess.run(
            [str(python), "-c", IMPORT_SNIPPET.format(backend=backend)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd="/",
        )
        imports.append(float(out.stdout.strip()))
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                str(python),
                "-m",
                "edgefpn.runtime",
                "bench",
                "--bundle",
                str(bundle),
                "--engine",
                engine,
                "--iters",
                "10",
                "--warmup",
                "2",
                "--threads",
                "1",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
        )
        if proc.returncode != 0:
            raise SystemExit(f"{python}: runtime bench failed: {proc.stderr.strip()}")
        walls.append(time.perf_counter() - t0)
        firsts.append(json.loads(proc.stdout))
    startup = {k: _median([f["startup_s"][k] for f in firsts]) for k in firsts[0]["startup_s"]}
    return {
        "import_s": _median(imports),
        "process_wall_s": _median(walls),
        "startup_s": startup,
        "model_only_ms_p50": _median([f["model_only_ms"]["p50"] for f in firsts]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--rt-venv", type=Path, default=Path("/tmp/rt"))
    ap.add_argument("--full-venv", type=Path, default=ROOT / ".venv")
    ap.add_argument("--engines", nargs="+", default=["onnxruntime-fp32", "openvino-fp32"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (args.rt_venv / "bin" / "python").exists():
        make_runtime_venv(args.rt_venv)
    check = subprocess.run(
        [
            str(args.rt_venv / "bin" / "python"),
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'torchvision', 'click', 'tqdm', "
            "'yaml') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    venvs = {"runtime": args.rt_venv, "full": args.full_venv}
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "bundle_bytes": args.bundle.stat().st_size,
        "runtime_venv_has": check.stdout.strip(),
        "site_packages_mib": {name: du_mib(site_packages(v)) for name, v in venvs.items()},
        "engines": {
            e: {
                name: measure(v / "bin" / "python", args.bundle, args.images, e, args.repeats)
                for name, v in venvs.items()
            }
            for e in args.engines
        },
    }
    out = ROOT / "benchmarks" / "runtime_footprint"
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    sp = r["site_packages_mib"]
    lines = [
        "# Device runtime footprint",
        "",
        f"Made by `benchmarks/runtime_footprint.py` on {r['machine']['platform']}, {r['machine']['cpus']} "
        f"CPUs, Python {r['machine']['python']}; medians of repeated cold processes, 1 inference thread; "
        f"bundle {r['bundle_bytes'] / 2**20:.2f} MiB.",
        "",
        f"Installed size (site-packages): runtime venv **{sp['runtime']} MiB** vs full `.venv` "
        f"**{sp['full']} MiB**. Packages of the full stack present in the runtime venv: "
        f"{r['runtime_venv_has']}.",
        "",
        "| engine | venv | import runtime + backend (s) | verify (s) | extract (s) | load (s) | "
        "start-up to 1st inference (s) | whole process (s) | model-only p50 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for engine, per in r["engines"].items():
        for venv, m in per.items():
            s = m["startup_s"]
            lines.append(
                f"| {engine} | {venv} | {m['import_s']:.3f} | {s['verify']:.3f} | {s['extract']:.3f} | "
                f"{s['load']:.3f} | {s['to_first_inference']:.3f} | {m['process_wall_s']:.3f} | "
                f"{m['model_only_ms_p50']:.3f} |"
            )
    lines += [
        "",
        "start-up to 1st inference = verify + extract + load + one inference, inside the process; "
        "whole process = interpreter start to exit of `python -m edgefpn.runtime bench` (10 iterations).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

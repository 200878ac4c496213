"""Rendering the check report (Markdown) and describing the machine it ran on."""

from __future__ import annotations

import os
import platform
from typing import Any

from edgefpn.artifacts import tool_versions


def system_info(threads: int) -> dict[str, Any]:
    cpu, flags = platform.processor() or "unknown", []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("unknown", "", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni")
                    flags = [f for f in wanted if f in have]
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "cpu_flags": flags,
        "threads": threads,
        "os": platform.platform(),
        "versions": tool_versions(),
    }


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def render_markdown(report: dict[str, Any]) -> str:
    ref = report["reference"]
    engines = report["engines"]
    ok = all(e["gates"]["passed"] for e in engines)
    lines = [
        "# edgefpn check report",
        "",
        f"**{'All gates passed' if ok else 'GATES FAILED'}** · reference {ref['engine']}: "
        f"mAP {ref['map']:.2f}, mAP50 {ref['map50']:.2f} on {report['dataset']['images']} "
        f"{report['dataset']['split']} images · {report['machine']['cpu']}, "
        f"{report['machine']['threads']} threads",
        "",
        "| engine | precision | mAP | ΔmAP | mAP50 | min cosine | max abs err | det. matched | "
        "model p50 ms | e2e p50 ms | FPS | gates |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in engines:
        outs = e.get("outputs", {})
        min_cos = min((o["cosine"] for o in outs.values()), default=None)
        max_abs = max((o["max_abs"] for o in outs.values()), default=None)
        matched = e.get("detections", {}).get("matched_fraction")
        lat = e["latency"]
        gate = "✅" if e["gates"]["passed"] else "❌ " + "; ".join(e["gates"]["failed"])
        lines.append(
            f"| {e['name']} | {e['precision']} | {e['map']:.2f} | {e['map_delta']:+.3f} | {e['map50']:.2f} | "
            f"{_fmt(min_cos, 6)} | {_fmt(max_abs, 6) if max_abs is None else f'{max_abs:.2e}'} | "
            f"{_fmt(matched, 4)} | {lat['model_only']['p50']:.2f} | {lat['end_to_end']['p50']:.2f} | "
            f"{e['fps']:.1f} | {gate} |"
        )
    for e in engines:
        if not e.get("levels"):
            continue
        lines += ["", f"## {e['name']}: per-level agreement with the reference", "",
                  "| level | branch | cosine | max abs | SNR dB |", "|---|---|---:|---:|---:|"]
        for level, branches in e["levels"].items():
            for branch, s in branches.items():
                lines.append(f"| {level} | {branch} | {s['cosine']:.7f} | {s['max_abs']:.2e} | {s['snr_db']:.1f} |")
    lines += ["", "mAP is COCO bbox AP in points (0–100); latency is batch 1, "
              f"{report['machine']['threads']} threads; model = engine call only, e2e = image file → detections.", ""]
    return "\n".join(lines)

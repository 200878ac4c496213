"""Rendering the check report (Markdown), describing the machine it ran on, and the compute figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path
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
    from edgefpn.runtime.device import device_kind

    return {
        "cpu": cpu,
        # the key the device runtime matches to rank a bundle's engines by these latencies
        "device_kind": device_kind(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "cpu_flags": flags,
        "threads": threads,
        "os": platform.platform(),
        "versions": tool_versions(),
    }


def with_compute(report: dict[str, Any], onnx_path: Path, threads: int) -> dict[str, Any]:
    """``report`` plus the model's FLOPs (top-level ``flops``) and, per engine, the achieved GFLOP/s at
    the model-only p50 and its fraction of this CPU's peak (int8 engines: the int8 peak)."""
    from edgefpn.flops import achieved, count_flops, cpu_peak

    flops = count_flops(onnx_path)
    peak = cpu_peak(threads)
    engines = [
        e | achieved(flops["gflops_per_image"], e["latency"]["model_only"]["p50"], e["precision"], peak)
        for e in report["engines"]
    ]
    section = {k: flops[k] for k in ("gflops_per_image", "flops_per_image", "by_op", "convention")}
    return report | {"engines": engines, "flops": section | {"peak": peak}}


TABLE_HEADER = (
    "engine",
    "precision",
    "mAP",
    "ΔmAP",
    "mAP50",
    "min cosine",
    "max abs err",
    "det. matched",
    "model p50 ms",
    "e2e p50 ms",
    "FPS",
    "GFLOP/s (% nominal peak)",
    "gates",
)


def table_row(e: dict[str, Any]) -> list[str]:
    """One engine's cells under :data:`TABLE_HEADER` (shared by report.md and report.html)."""
    outs = e.get("outputs", {})
    min_cos = min((o["cosine"] for o in outs.values()), default=None)
    max_abs = max((o["max_abs"] for o in outs.values()), default=None)
    matched = e.get("detections", {}).get("matched_fraction")
    lat = e["latency"]
    gate = "✅" if e["gates"]["passed"] else "❌ " + "; ".join(e["gates"]["failed"])
    compute = "–"
    if e.get("achieved_gflops") is not None:
        frac = e.get("fraction_of_peak")
        compute = f"{e['achieved_gflops']:.1f}" + (
            f" ({100 * frac:.1f}% {e.get('peak_basis', '')})" if frac else ""
        )
    return [
        e["name"],
        e["precision"],
        f"{e['map']:.2f}",
        f"{e['map_delta']:+.3f}",
        f"{e['map50']:.2f}",
        _fmt(min_cos, 6),
        "–" if max_abs is None else f"{max_abs:.2e}",
        _fmt(matched, 4),
        f"{lat['model_only']['p50']:.2f}",
        f"{lat['end_to_end']['p50']:.2f}",
        f"{e['fps']:.1f}",
        compute,
        gate,
    ]


def end_to_end_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)``: per engine, end to end against model only, at the deployment score threshold
    (what predict and the packaged runtime keep) and, where it differs, at the evaluation one. Shared by
    report.md and report.html."""
    first = report["engines"][0]["latency"]
    deploy_t = first["end_to_end"].get("score_thresh")
    eval_t = first.get("end_to_end_eval", {}).get("score_thresh")
    head = ["engine", "model p50 ms", f"e2e p50 ms (score > {_fmt(deploy_t)})", "e2e / model", "dets/img"]
    if eval_t is not None:
        head += [f"e2e p50 ms (score > {_fmt(eval_t)}, mAP's)", "e2e / model", "dets/img"]
    rows = []
    for e in report["engines"]:
        lat = e["latency"]
        model = lat["model_only"]["p50"]
        row = [e["name"], f"{model:.2f}"]
        for key in ("end_to_end", "end_to_end_eval") if eval_t is not None else ("end_to_end",):
            e2e = lat[key]
            row += [
                f"{e2e['p50']:.2f}",
                f"{e2e['p50'] / model:.2f}×" if model > 0 else "–",
                _fmt(e2e.get("detections_per_image"), 1),
            ]
        rows.append(row)
    return head, rows


def end_to_end_table(report: dict[str, Any]) -> list[str]:
    """Markdown lines of :func:`end_to_end_rows`, under a heading."""
    head, rows = end_to_end_rows(report)
    return [
        "## End to end vs model only",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


SPEEDUP_HEADER = (
    "int8 engine",
    "vs",
    "int8 p50 ms",
    "fp32 p50 ms",
    "speedup (median of pairs)",
    "pairs",
    "gate",
)


def speedup_rows(report: dict[str, Any]) -> list[list[str]]:
    """Per INT8 engine with an FP32 engine on its backend: the paired model-only speedup (check's
    ``_int8_speedups``) under :data:`SPEEDUP_HEADER`. Shared by report.md and report.html."""
    rows = []
    for e in report["engines"]:
        if not (s := e.get("int8_speedup")):
            continue
        ok = s["speedup"] >= s["min_speedup"]
        rows.append(
            [
                e["name"],
                s["vs"],
                f"{s['p50_ms']:.2f}",
                f"{s['vs_p50_ms']:.2f}",
                f"{s['speedup']:.2f}×",
                str(s["pairs"]),
                f"{'pass' if ok else 'FAIL'} (≥ {s['min_speedup']:g}×)",
            ]
        )
    return rows


SPEEDUP_NOTE = (
    "INT8 and FP32 of one backend are timed in interleaved pairs on the same input (the order "
    "alternating), and the speedup is the median of the per-pair fp32 / int8 ratios: a ratio from "
    "the same moments on a shared machine. An INT8 engine under check.min_int8_speedup fails."
)


def contract_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)``: each in-graph (``-e2e``) engine beside its raw twin (same backend, precision
    and network): mAP, model-only and end-to-end p50 of both contracts, the in-graph e2e p50 over the
    raw twin's model-only p50, and their detection agreement. Empty rows without e2e engines."""
    by_name = {e["name"]: e for e in report["engines"]}
    head = [
        "engine",
        "input",
        "mAP raw",
        "mAP in-graph",
        "model p50 raw",
        "model p50 in-graph",
        "e2e p50 raw",
        "e2e p50 in-graph",
        "in-graph e2e / raw model",
        "matched",
        "mean IoU",
        "max score err",
        "label flips",
    ]
    rows = []
    for e in report["engines"]:
        twin = e.get("twin")
        raw = by_name.get(twin["engine"]) if twin else None
        if raw is None:
            continue
        rm, em = raw["latency"]["model_only"]["p50"], e["latency"]["model_only"]["p50"]
        re2e, ee2e = raw["latency"]["end_to_end"]["p50"], e["latency"]["end_to_end"]["p50"]
        rows.append(
            [
                e["name"],
                e.get("contract", {}).get("input", "–"),
                _fmt(raw["map"]),
                _fmt(e["map"]),
                f"{rm:.2f}",
                f"{em:.2f}",
                f"{re2e:.2f}",
                f"{ee2e:.2f}",
                f"{ee2e / rm:.2f}×" if rm > 0 else "–",
                f"{twin['matched_fraction']:.4f}",
                f"{twin['mean_iou']:.4f}",
                f"{twin['max_score_error']:.1e}",
                str(twin["label_flips"]),
            ]
        )
    return head, rows


def contract_table(report: dict[str, Any]) -> list[str]:
    """Markdown lines of :func:`contract_rows` under a heading (none without e2e engines)."""
    head, rows = contract_rows(report)
    if not rows:
        return []
    return [
        "## Engine contracts: raw outputs vs in-graph decode + NMS",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|" + "---:|" * (len(head) - 2),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        "Latency p50 in ms. e2e = image file → detections at the deployment threshold; for the in-graph "
        "engine that is decode + resize on the host, the rest in the engine. Agreement: the in-graph "
        "engine's detections against its raw twin's numpy-decoded ones on every image, at mAP's threshold.",
    ]


def compute_note(report: dict[str, Any]) -> str | None:
    """One sentence on the FLOPs convention and the peak the fractions refer to (None without them)."""
    f = report.get("flops")
    if not f:
        return None
    p = f["peak"]
    return (
        f"Compute: {f['gflops_per_image']:.3f} GFLOPs per image ({f['convention']}). Peak of "
        f"{p['cores']} core(s) at {p['ghz']:.2f} GHz: {p['fp32_gflops']:.0f} GFLOP/s fp32 "
        f"({p['fp32_flop_per_cycle_per_core']} FLOP/cycle/core, {p['fp32_basis']}), {p['int8_gops']:.0f} "
        f"GOP/s int8 ({p['int8_factor']}x{', VNNI' if p['int8_vnni'] else ''}); int8 engines are measured "
        "against the int8 peak. The clock is the nominal one the OS reports (a VM hides the turbo "
        "clock), so an engine running at turbo can show more than 100% of this nominal peak."
    )


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
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|---|---|" + "---:|" * (len(TABLE_HEADER) - 3) + "---|",
    ]
    for e in engines:
        lines.append("| " + " | ".join(table_row(e)) + " |")
    if ignored := report.get("ignored_engines"):  # on disk, but not this configuration's or model's
        lines += [
            "",
            "Not compared: " + "; ".join(f"{i['name']} (`{i['path']}`): {i['reason']}" for i in ignored),
        ]
    for e in engines:
        if not e.get("levels"):
            continue
        lines += [
            "",
            f"## {e['name']}: per-level agreement with the reference",
            "",
            "| level | branch | cosine | SNR dB | worst-image cosine | max abs |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for level, branches in e["levels"].items():
            for branch, s in branches.items():
                lines.append(
                    f"| {level} | {branch} | {s['cosine']:.7f} | {s['snr_db']:.1f} | "
                    f"{s.get('min_image_cosine', s['cosine']):.5f} | {s['max_abs']:.2e} |"
                )
    lines += ["", *end_to_end_table(report)]
    if rows := speedup_rows(report):
        lines += [
            "",
            "## INT8 vs FP32 of the same backend (model only, paired)",
            "",
            "| " + " | ".join(SPEEDUP_HEADER) + " |",
            "|---|---|" + "---:|" * 4 + "---|",
            *("| " + " | ".join(r) + " |" for r in rows),
            "",
            SPEEDUP_NOTE,
        ]
    if gallery := report.get("gallery"):
        worst = [f"{name} ({len(items)})" for name, items in gallery["engines"].items() if items]
        lines += [
            "",
            f"Disagreement gallery (report.html): {', '.join(worst) if worst else 'no engine disagrees'} "
            f"at score ≥ {gallery['score_thresh']:.2f}.",
        ]
    if contracts := contract_table(report):
        lines += ["", *contracts]
    lines += [
        "",
        "mAP is COCO bbox AP in points (0–100); model-only latency is one engine call of batch "
        f"{report['config'].get('batch', 1)}, end to end one image, "
        f"{report['machine']['threads']} threads; model = engine call only, e2e = image file → detections "
        "(decode, letterbox, normalise, infer, decode boxes, NMS).",
    ]
    if note := compute_note(report):
        lines += ["", note]
    lines.append("")
    return "\n".join(lines)

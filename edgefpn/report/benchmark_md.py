"""benchmark.md from benchmark.json: the scenarios table, FPS definitions, batch sweep, benchmark_app
agreement.

Every FPS is printed beside its conditions (threads, streams, requests, batch; the machine line below
each table names the CPU, governor, clock and, on a Jetson, the power mode, clocks and power).
"""

from __future__ import annotations

import json
from typing import Any

from edgefpn.runtime.conditions import format_conditions

__all__ = ["render_markdown"]

_WITHIN = 0.20  # the agreement bound with benchmark_app


def _knobs(c: dict[str, Any] | None) -> str:
    """``b4 s2 r4 t2`` (batch, streams, requests, threads) and the load when it was read."""
    if not c:
        return "–"
    parts = [f"{k[0]}{c[k]}" for k in ("batch", "streams", "requests", "threads") if c.get(k) is not None]
    load = f", load {c['load_avg_1m']:.1f}" if c.get("load_avg_1m") is not None else ""
    return " ".join(parts) + load


def _ratio(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.2f}" + (" ✓" if abs(x - 1) <= _WITHIN else " ✗")


def _scenario_rows(report: dict[str, Any]) -> list[str]:
    lines = [
        "| engine | single_stream FPS | p50 / p90 / p99 ms | e2e p50 ms | e2e FPS | conditions | offline FPS "
        "| conditions | streaming FPS (deploy / eval) | conditions |",
        "|---|---:|---|---:|---:|---|---:|---|---|---|",
    ]
    for r in report["engines"]:
        if "skipped" in r:
            lines.append(f"| {r['name']} | " + " | ".join(["–"] * 8) + f" | skipped: {r['skipped']} |")
            continue
        s = r["scenarios"]
        ss, off = s["single_stream"], s["offline"]
        mo = ss["model_only_ms"]
        e2e = ss.get("end_to_end_ms")
        e2e_txt = (f"{e2e['p50']:.2f} | {ss['end_to_end_fps']:.1f}") if e2e else "– | –"
        lines.append(
            f"| {r['name']} | {ss['fps']:.1f} | {mo['p50']:.2f} / {mo['p90']:.2f} / {mo['p99']:.2f} | "
            f"{e2e_txt} | {_knobs(ss['conditions'])} | {off['fps']:.1f} | {_knobs(off['conditions'])} | "
            f"{_streaming_cell(s.get('streaming'))} |"
        )
    return lines


def _streaming_cell(st: dict[str, Any] | None) -> str:
    """The streaming scenario (written by the streaming runtime's benchmark), shown where present:
    ``{"deploy": {"fps", "latency_ms", "frames", "dropped", "conditions"}, "eval": {...}}``."""
    if not st:
        return "– | –"
    deploy, ev = st.get("deploy") or {}, st.get("eval") or {}
    fps = " / ".join(f"{x['fps']:.1f}" if x.get("fps") is not None else "–" for x in (deploy, ev))
    return f"{fps} | {_knobs(deploy.get('conditions') or ev.get('conditions'))}"


def _streaming_details(report: dict[str, Any]) -> list[str]:
    lines = []
    for r in report["engines"]:
        st = r.get("scenarios", {}).get("streaming")
        if not st:
            continue
        for key in ("deploy", "eval"):
            x = st.get(key)
            if not x:
                continue
            lat = x.get("latency_ms") or {}
            lat_txt = ", ".join(f"{k} {v:.1f} ms" for k, v in lat.items() if isinstance(v, (int, float)))
            lines.append(
                f"- {r['name']} streaming ({key} threshold): {x.get('fps', 0):.1f} FPS over "
                f"{x.get('frames', '?')} frames, {x.get('dropped', 0)} dropped; frame latency {lat_txt}; "
                f"{format_conditions(x['conditions']) if x.get('conditions') else 'conditions –'}"
            )
    return ["", "## Streaming", "", *lines] if lines else []


def _sweep_rows(report: dict[str, Any]) -> list[str]:
    rows = report.get("batch_sweep") or []
    if not rows:
        return []
    lines = [
        "",
        "## Batch sweep",
        "",
        "One request per call (latency of a batch-N call; FPS = N x 1000 / mean) and the best offline "
        "throughput at that batch (over streams and requests).",
        "",
        "| engine | batch | p50 / p90 / p99 ms per call | ms per image | FPS, 1 request | conditions | "
        "offline FPS | conditions |",
        "|---|---:|---|---:|---:|---|---:|---|",
    ]
    for r in rows:
        lat, off = r["latency_ms"], r.get("offline") or {}
        off_txt = f"{off['fps']:.1f} | {_knobs(off['conditions'])}" if off else "– | –"
        lines.append(
            f"| {r['engine']} | {r['batch']} | {lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f} | "
            f"{r['ms_per_image']:.2f} | {r['fps']:.1f} | {_knobs(r['conditions'])} | {off_txt} |"
        )
    return lines


def _agreement_rows(report: dict[str, Any]) -> list[str]:
    lines, commands = [], []
    for r in report["engines"]:
        s = r.get("scenarios") or {}
        ss_app = (s.get("single_stream") or {}).get("benchmark_app")
        off_app = (s.get("offline") or {}).get("benchmark_app")
        if ss_app:
            if "median_ms" in ss_app:
                ours = ss_app["rounds"] and sorted(x["ours_p50_ms"] for x in ss_app["rounds"])
                ours_txt = f"p50 {ours[len(ours) // 2]:.2f} ms" if ours else "–"
                lines.append(
                    f"| {r['name']} | single_stream vs latency mode | {ours_txt} | "
                    f"median {ss_app['median_ms']:.2f} ms | {_ratio(ss_app['ours_over_app_p50'])} |"
                )
            else:
                lines.append(
                    f"| {r['name']} | single_stream vs latency mode | – | {ss_app.get('skipped', '–')} | – |"
                )
            if "command" in ss_app:
                commands.append(
                    f"- {r['name']} latency: `{ss_app['command']}` with `{json.dumps(ss_app['load_config'])}`"
                )
        if off_app:
            if "fps" in off_app:
                lines.append(
                    f"| {r['name']} | offline vs async mode "
                    f"({_knobs(r['scenarios']['offline']['conditions'])}) "
                    f"| {off_app['ours_fps']:.1f} FPS | {off_app['fps']:.1f} FPS | "
                    f"{_ratio(off_app['ours_over_app_fps'])} |"
                )
            else:
                lines.append(
                    f"| {r['name']} | offline vs async mode | – | {off_app.get('skipped', '–')} | – |"
                )
            if "command" in off_app:
                commands.append(
                    f"- {r['name']} async: `{off_app['command']}` with `{json.dumps(off_app['load_config'])}`"
                )
    if not lines:
        return []
    rounds = report["settings"].get("app_rounds", 1)
    return [
        "",
        "## Agreement with OpenVINO benchmark_app",
        "",
        "Same engine, input tensor, threads, streams, requests and batch; ours and benchmark_app "
        f"interleaved in {rounds} round(s); the ratio is the median of the rounds' ratios (✓: within "
        f"{_WITHIN:.0%}). Latency ratio: our p50 / its median; throughput ratio: our FPS / its FPS.",
        "",
        "| engine | scenario | ours | benchmark_app | ours / benchmark_app |",
        "|---|---|---:|---:|---:|",
        *lines,
        "",
        *commands,
    ]


def render_markdown(report: dict[str, Any]) -> str:
    """benchmark.md: one table of the scenarios per engine, then definitions, batch sweep and agreement."""
    st = report["settings"]
    first = next(
        (r["scenarios"]["single_stream"]["conditions"] for r in report["engines"] if "scenarios" in r), None
    )
    lines = [
        "# edgefpn benchmark",
        "",
        f"Input {report['input']['source']} {report['input']['shape']} · {st['iters']} timed single-stream "
        f"iterations after {st['warmup']} warm-up · offline sweep points of {st['throughput_seconds']:g} s",
        "",
        f"Machine: {format_conditions(first).split('; ', 1)[-1] if first else report['machine']['cpu']}",
        "",
        "Conditions: b = batch, s = streams (OpenVINO streams, ONNX Runtime sessions, CUDA streams), "
        "r = requests in flight, t = threads; load = 1-minute load average when the figure was taken.",
        "",
        *_scenario_rows(report),
        "",
        "## What each FPS means",
        "",
        *[f"- **{name}**: {text}" for name, text in report.get("definitions", {}).items()],
    ]
    lines += _streaming_details(report)
    lines += _sweep_rows(report)
    lines += _agreement_rows(report)
    if f := report.get("flops"):
        lines += [
            "",
            f"Compute: {f['gflops_per_image']:.3f} GFLOPs per image ({f['convention']}); peak "
            f"{f['peak']['fp32_gflops']:.0f} GFLOP/s fp32, {f['peak']['int8_gops']:.0f} GOP/s int8 "
            f"({f['peak']['fp32_basis']}).",
        ]
    lines.append("")
    return "\n".join(lines)

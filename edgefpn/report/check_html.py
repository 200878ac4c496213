"""report.html: the check report as one self-contained page (inline CSS, plots as inline PNG).

Nothing on the page is fetched from anywhere: it opens the same offline, attached to a ticket or
from a CI artifact. This module assembles the page (headline, tables, sections); the plots come
from :mod:`edgefpn.report.check_plots`, the thumbnails from :mod:`edgefpn.report.gallery`.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from edgefpn.report import gallery
from edgefpn.report.check_md import (
    SPEEDUP_HEADER,
    SPEEDUP_NOTE,
    TABLE_HEADER,
    compute_note,
    contract_rows,
    end_to_end_rows,
    speedup_rows,
    table_row,
)
from edgefpn.report.check_plots import plot_accuracy_latency, plot_latency, plot_levels

__all__ = ["render_html", "ship_choice"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;\
background:#f5f6f8;color:#1d2329}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5f6b76;margin-bottom:16px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 20px;margin:12px 0}
.ship{border-left:6px solid #2e7d32}.noship{border-left:6px solid #c62828}
.ship .big,.noship .big{font-size:20px;font-weight:600}
.kpis{display:flex;gap:28px;flex-wrap:wrap;margin-top:8px}.kpi b{display:block;font-size:18px}
.kpi span{color:#5f6b76;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{padding:4px 6px;border-bottom:1px solid #e3e6ea;text-align:right;white-space:nowrap}
th{background:#eef1f4;position:sticky;top:0}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2),td:last-child,th:last-child{text-align:left}
table.e2e td,table.e2e th{text-align:right}table.e2e td:first-child,table.e2e th:first-child{text-align:left}
td:last-child{white-space:normal;min-width:5em}
tr.pass td:first-child{border-left:4px solid #2e7d32}tr.fail td:first-child{border-left:4px solid #c62828}
tr.fail{background:#fdecea}tr.ref{background:#f1f3f5}
.wide{overflow-x:auto}.fails li{color:#c62828}code{background:#eef1f4;padding:1px 4px;border-radius:3px}
img{max-width:100%;height:auto;display:block;margin:auto}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}\
@media(max-width:900px){.grid{grid-template-columns:1fr}}
details summary{cursor:pointer;font-weight:600;margin:6px 0}
.note{color:#5f6b76;font-size:12px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;max-width:320px}
figure img{border-radius:4px;margin:0}figcaption{color:#5f6b76;font-size:12px;margin-top:4px}
h3{font-size:14px;margin:14px 0 6px}\
.sw{display:inline-block;width:12px;height:9px;border:3px solid;margin:0 4px 0 10px;vertical-align:middle}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}dt{color:#5f6b76}dd{margin:0}
"""


def ship_choice(report: dict[str, Any]) -> dict[str, Any] | None:
    """The engine to ship: the fastest (end-to-end p50) non-reference engine that passed every gate.

    Returns:
        ``{"engine", "map_delta", "e2e_p50_ms", "speedup_e2e", "speedup_model", "e2e_over_model"}``
        (speed-ups against the PyTorch reference), or None when no engine passed.
    """
    ref_name = report["reference"]["engine"]
    ref = next((e for e in report["engines"] if e["name"] == ref_name), None)
    passed = [e for e in report["engines"] if e["name"] != ref_name and e["gates"]["passed"]]
    if not passed:
        return None
    best = min(passed, key=lambda e: e["latency"]["end_to_end"]["p50"])
    e2e, model = best["latency"]["end_to_end"]["p50"], best["latency"]["model_only"]["p50"]
    return {
        "engine": best,
        "map_delta": best["map_delta"],
        "e2e_p50_ms": e2e,
        "speedup_e2e": ref["latency"]["end_to_end"]["p50"] / e2e if ref and e2e > 0 else None,
        "speedup_model": ref["latency"]["model_only"]["p50"] / model if ref and model > 0 else None,
        "e2e_over_model": e2e / model if model > 0 else None,
    }


def _at(e2e: dict[str, Any]) -> str:
    t = e2e.get("score_thresh")
    return "" if t is None else f" (score > {t:g})"


def render_html(report: dict[str, Any]) -> str:
    """The whole page as a string (UTF-8, no external references)."""
    engines = report["engines"]
    ok = all(e["gates"]["passed"] for e in engines)
    ref = report["reference"]
    m = report["machine"]
    sub = (
        f"reference {escape(ref['engine'])}: mAP {ref['map']:.2f}, mAP50 {ref['map50']:.2f} on "
        f"{report['dataset']['images']} {escape(str(report['dataset']['split']))} images · "
        f"{escape(str(m['cpu']))}, {m['threads']} threads · {'all gates passed' if ok else 'GATES FAILED'}"
    )
    plots = [
        (
            "Accuracy vs latency",
            plot_accuracy_latency(report),
            "x: model-only p50 (whisker to p90), y: COCO mAP; ✕ = an engine that failed a gate.",
        ),
        (
            "Per-level error vs the reference",
            plot_levels(report),
            "Worst branch (cls/box/ctr) per level, over the split; dashed: the cosine gate of each "
            "precision.",
        ),
        (
            "Latency distribution (model only, batch 1)",
            plot_latency(report),
            "Every timed iteration; box = quartiles, whiskers = 1.5 IQR.",
        ),
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>edgefpn check report</title><style>{_CSS}</style></head><body><main>",
        f"<h1>edgefpn check report</h1><div class='sub'>{sub}</div>",
        _headline(report),
        "<h2>Engines</h2><div class='card wide'>",
        _engine_table(report),
        "</div>",
        "<h2>End to end vs model only</h2><div class='card wide'>",
        _e2e_table(report),
        "<p class='note'>End to end = image file → detections (decode, letterbox, normalise, infer, decode "
        "boxes, NMS), at the deployment score threshold and at mAP's evaluation threshold.</p></div>",
        _speedup_table(report),
    ]
    head, rows = contract_rows(report)
    if rows:  # the in-graph (-e2e) engines beside their raw twins
        parts += [
            "<h2>Engine contracts: raw outputs vs in-graph decode + NMS</h2><div class='card wide'>",
            _rows_table(head, rows),
            "<p class='note'>Latency p50 in ms; agreement of each in-graph "
            "engine with its raw twin on every image.</p></div>",
        ]
    if note := compute_note(report):
        parts.append(f"<p class='note'>{escape(note)}</p>")
    parts.append("<div class='grid'>")
    for title, png, caption in plots:
        body = (
            f"<img alt='{escape(title)}' src='data:image/png;base64,{png}'>"
            if png
            else "<p class='note'>no data for this plot in the report</p>"
        )
        parts.append(
            f"<div class='card'><h2>{escape(title)}</h2>{body}<p class='note'>{escape(caption)}</p></div>"
        )
    parts += [
        "</div>",
        gallery.render(report),
        _level_tables(report),
        _machine(report),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _headline(report: dict[str, Any]) -> str:
    choice = ship_choice(report)
    failed = [(e["name"], g) for e in report["engines"] for g in e["gates"]["failed"]]
    fails = ""
    if failed:
        items = "".join(f"<li><b>{escape(n)}</b>: {escape(g)}</li>" for n, g in failed)
        fails = f"<p><b>{len(failed)} gate(s) failed</b></p><ul class='fails'>{items}</ul>"
    if choice is None:
        return (
            f"<div class='card noship'><div class='big'>No engine to ship: none passed all gates</div>"
            f"{fails}</div>"
        )
    e = choice["engine"]

    def x(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}×"

    kpis = [
        (f"{choice['e2e_p50_ms']:.2f} ms", f"end-to-end p50{_at(e['latency']['end_to_end'])}"),
        (f"{e['latency']['model_only']['p50']:.2f} ms", "model-only p50"),
        (x(choice["e2e_over_model"]), "end-to-end / model-only"),
        (x(choice["speedup_e2e"]), f"e2e speed-up vs {report['reference']['engine']}"),
        (x(choice["speedup_model"]), "model speed-up"),
        (f"{e['map']:.2f} ({choice['map_delta']:+.3f})", "mAP (Δ vs reference)"),
    ]
    if e.get("achieved_gflops") is not None:
        kpis.append((f"{e['achieved_gflops']:.1f}", "achieved GFLOP/s"))
    kpi_html = "".join(f"<div class='kpi'><b>{escape(v)}</b><span>{escape(k)}</span></div>" for v, k in kpis)
    return (
        f"<div class='card ship'><div class='big'>Ship <code>{escape(e['name'])}</code></div>"
        f"<div class='note'>the fastest engine (end-to-end p50) that passed every gate</div>"
        f"<div class='kpis'>{kpi_html}</div>{fails}</div>"
    )


def _engine_table(report: dict[str, Any]) -> str:
    ref_name = report["reference"]["engine"]
    head = "".join(f"<th>{escape(h)}</th>" for h in TABLE_HEADER)
    rows = []
    for e in report["engines"]:
        cls = "ref" if e["name"] == ref_name else ("pass" if e["gates"]["passed"] else "fail")
        *cells, _ = table_row(e)
        # the gate cell as text, not emoji: headless browsers and CI boxes often lack an emoji font
        # (the full gate messages are listed in the headline card)
        failed = e["gates"]["failed"]
        levels = sorted({m for g in failed for m in re.findall(r"\(level (p\d)\)", g)})
        gate = (
            "✓ pass"
            if not failed
            else f"✗ {len(failed)} failed" + (f" ({', '.join(levels)})" if levels else "")
        )
        tds = "".join(f"<td>{escape(c)}</td>" for c in [*cells, gate])
        rows.append(f"<tr class='{cls}'>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _e2e_table(report: dict[str, Any]) -> str:
    return _rows_table(*end_to_end_rows(report))


def _rows_table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='e2e'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _speedup_table(report: dict[str, Any]) -> str:
    rows = speedup_rows(report)
    if not rows:
        return ""
    th = "".join(f"<th>{escape(h)}</th>" for h in SPEEDUP_HEADER)
    body = "".join(
        f"<tr class='{'pass' if r[-1].startswith('pass') else 'fail'}'>"
        + "".join(f"<td>{escape(c)}</td>" for c in r)
        + "</tr>"
        for r in rows
    )
    return (
        f"<h2>INT8 vs FP32 of the same backend</h2><div class='card wide'><table class='e2e'><thead><tr>{th}"
        f"</tr></thead><tbody>{body}</tbody></table><p class='note'>{escape(SPEEDUP_NOTE)}</p></div>"
    )


def _level_tables(report: dict[str, Any]) -> str:
    parts = ["<h2>Per-level agreement</h2><div class='card'>"]
    for e in report["engines"]:
        if not e.get("levels"):
            continue
        rows = []
        for level, branches in e["levels"].items():
            for branch, s in branches.items():
                bad = s["nonfinite"] or any(f"{branch}_{level}" in g for g in e["gates"]["failed"])
                rows.append(
                    f"<tr class='{'fail' if bad else ''}'><td>{level}</td><td>{branch}</td>"
                    f"<td>{s['cosine']:.7f}</td><td>{s['max_abs']:.2e}</td><td>{s['snr_db']:.1f}</td>"
                    f"<td>{s['nonfinite']}</td></tr>"
                )
        mark = "✓" if e["gates"]["passed"] else "✗"
        parts.append(
            f"<details{'' if e['gates']['passed'] else ' open'}><summary>{mark} {escape(e['name'])}"
            "</summary><table><thead><tr><th>level</th><th>branch</th><th>cosine</th><th>max abs</th>"
            f"<th>SNR dB</th><th>NaN/Inf</th></tr></thead><tbody>{''.join(rows)}</tbody></table></details>"
        )
    parts.append("</div>")
    return "".join(parts)


def _machine(report: dict[str, Any]) -> str:
    m = report["machine"]
    rows = [
        ("CPU", m.get("cpu")),
        ("machine", m.get("machine")),
        ("logical cores", m.get("logical_cores")),
        ("threads", m.get("threads")),
        ("CPU flags", " ".join(m.get("cpu_flags", [])) or "–"),
        ("OS", m.get("os")),
    ]
    if peak := report.get("flops", {}).get("peak"):
        rows.append(("peak assumptions", peak["assumptions"]))
    versions = m.get("versions", {})
    dl = "".join(f"<dt>{escape(str(k))}</dt><dd>{escape(str(v))}</dd>" for k, v in rows)
    vl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in sorted(versions.items()))
    cfg = report.get("config", {})
    gates = cfg.get("check", {})
    gl = (
        f"<dt>max mAP drop</dt><dd>{escape(str(gates.get('max_map_drop')))}</dd>"
        f"<dt>min cosine</dt><dd>{escape(str(gates.get('min_cosine')))}</dd>"
        f"<dt>input size</dt><dd>{escape(str(cfg.get('input_size')))}</dd>"
    )
    return (
        f"<h2>Machine and versions</h2><div class='grid'><div class='card'><dl>{dl}{gl}</dl></div>"
        f"<div class='card'><dl>{vl}</dl></div></div>"
    )

"""The three plots of report.html, drawn with matplotlib and returned as base64 PNG.

They are separate from the page assembly in :mod:`edgefpn.report.check_html` because they change
with matplotlib (its API, its layout engine) and with what the figures show, while the page changes
with the report's sections; and because they are the only part that needs matplotlib. Drawn with the
Agg renderer on a bare ``Figure`` (no pyplot, so no global backend state and no display needed).
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

__all__ = ["plot_accuracy_latency", "plot_latency", "plot_levels"]

_PASS, _FAIL, _REF = "#2e7d32", "#c62828", "#455a64"
_FLOOR = 1e-12  # log-scale floor for errors that are exactly zero


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _maybe_log_x(ax, values: list[float]) -> None:
    """Log x when the values span more than 5x (a PyTorch reference next to compiled engines)."""
    pos = [v for v in values if v > 0]
    if pos and max(pos) / min(pos) > 5:
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())


def _colour(e: dict[str, Any], ref_name: str) -> str:
    return _REF if e["name"] == ref_name else (_PASS if e["gates"]["passed"] else _FAIL)


def plot_accuracy_latency(report: dict[str, Any]) -> str:
    """mAP against model-only p50 per engine (whisker to p90); failed engines marked ✕."""
    ref_name = report["reference"]["engine"]
    fig = _figure(5.6, 3.9)
    ax = fig.add_subplot()
    for i, e in enumerate(sorted(report["engines"], key=lambda e: e["latency"]["model_only"]["p50"])):
        mo = e["latency"]["model_only"]
        colour = _colour(e, ref_name)
        marker = "*" if e["name"] == ref_name else ("o" if e["gates"]["passed"] else "X")
        ax.errorbar(
            [mo["p50"]],
            [e["map"]],
            xerr=[[0.0], [max(mo["p90"] - mo["p50"], 0.0)]],
            fmt=marker,
            color=colour,
            ms=11 if marker == "*" else 8,
            capsize=3,
            lw=1,
        )
        # labels of neighbouring points alternate above and below so that clusters stay readable
        ax.annotate(
            e["name"],
            (mo["p50"], e["map"]),
            textcoords="offset points",
            xytext=(6, (8, -14, 20, -26)[i % 4]),
            fontsize=8,
            color=colour,
            arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5, "alpha": 0.6},
        )
    _maybe_log_x(ax, [e["latency"]["model_only"]["p50"] for e in report["engines"]])
    ax.set_xlabel("model-only p50 latency (ms), batch 1")
    ax.set_ylabel("COCO mAP")
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.25, y=0.2)
    return _png(fig)


def plot_levels(report: dict[str, Any]) -> str | None:
    """Worst-branch error per pyramid level and engine, with the cosine gates; None without levels."""
    engines = [e for e in report["engines"] if e.get("levels")]
    if not engines:
        return None
    import numpy as np

    # the levels the engines report (p3..p7 for FCOS / RetinaNet, p2.. for two-stage detectors)
    levels = sorted({lvl for e in engines for lvl in e["levels"]}, key=lambda lvl: int(lvl[1:]))
    fig = _figure(5.6, 5.2)
    ax_cos, ax_abs = fig.subplots(2, 1, sharex=True)
    width = 0.8 / len(engines)
    x = np.arange(len(levels))
    for i, e in enumerate(engines):
        deficit, max_abs, nonfinite = [], [], []
        for level in levels:
            branches = e["levels"].get(level, {})
            cos = min((s["cosine"] for s in branches.values()), default=1.0)
            deficit.append(max(1.0 - cos, _FLOOR))
            max_abs.append(max(max((s["max_abs"] for s in branches.values()), default=0.0), _FLOOR))
            nonfinite.append(sum(s["nonfinite"] for s in branches.values()))
        colour = None if e["gates"]["passed"] else _FAIL
        offs = x - 0.4 + width * (i + 0.5)
        bars = ax_cos.bar(
            offs,
            deficit,
            width,
            label=e["name"],
            color=colour,
            hatch=None if e["gates"]["passed"] else "//",
            edgecolor="white",
        )
        ax_abs.bar(
            offs,
            max_abs,
            width,
            color=bars.patches[0].get_facecolor(),
            hatch=None if e["gates"]["passed"] else "//",
            edgecolor="white",
        )
        for xo, n in zip(offs, nonfinite, strict=True):
            if n:
                for ax in (ax_cos, ax_abs):
                    ax.annotate(
                        "NaN",
                        (xo, 1.0),
                        xycoords=("data", "axes fraction"),
                        ha="center",
                        va="top",
                        color=_FAIL,
                        fontsize=7,
                        fontweight="bold",
                    )
    gates = report.get("config", {}).get("check", {}).get("min_cosine", {})
    for precision in sorted({e["precision"] for e in engines}):
        if (g := gates.get(precision)) is not None and g < 1.0:
            ax_cos.axhline(1.0 - g, ls="--", lw=0.8, color="#888")
            ax_cos.annotate(
                f"{precision} gate",
                (1.0, 1.0 - g),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize=7,
                color="#666",
            )
    for ax, label in ((ax_cos, "1 − cosine"), (ax_abs, "max abs error")):
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    ax_abs.set_xticks(x, levels)
    ax_abs.set_xlabel("pyramid level")
    fig.legend(
        *ax_cos.get_legend_handles_labels(),
        loc="outside upper center",
        fontsize=7,
        ncol=min(len(engines), 3),
        frameon=False,
    )
    return _png(fig)


def plot_latency(report: dict[str, Any]) -> str | None:
    """Box plot of every timed model-only iteration; None when no engine recorded its samples."""
    ref_name = report["reference"]["engine"]
    rows = [(e, e["latency"]["model_only"].get("samples_ms")) for e in report["engines"]]
    rows = [(e, s) for e, s in rows if s and all(math.isfinite(v) for v in s)]
    if not rows:
        return None
    fig = _figure(5.6, 0.6 + 0.45 * len(rows) + 0.9)
    ax = fig.add_subplot()
    parts = ax.boxplot(
        [s for _, s in rows],
        orientation="horizontal",
        widths=0.6,
        patch_artist=True,
        tick_labels=[e["name"] for e, _ in rows],
        flierprops={"markersize": 3},
    )
    for patch, (e, _) in zip(parts["boxes"], rows, strict=True):
        patch.set_facecolor(_colour(e, ref_name))
        patch.set_alpha(0.45)
    ax.invert_yaxis()
    _maybe_log_x(ax, [v for _, s in rows for v in s])
    ax.set_xlabel("model-only latency per iteration (ms)")
    ax.grid(alpha=0.3, axis="x", which="both")
    return _png(fig)

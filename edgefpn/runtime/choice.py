"""Which of a bundle's engines this device runs: decided from the verified manifest (and the bundle's
report) alone, before anything is extracted or any backend is imported. Separate from the session
(:class:`edgefpn.runtime.BundleSession`) because it is policy, not loading: it is unit-tested on
manifests alone and changes when a backend or a measurement arrives, not when the bundle format does.

Engine choice, among the bundle's engines this device can run (every bundled engine passed check's
gates): by measured speed first. When the bundle's ``report.json`` was measured on this kind of device
(``machine.device_kind`` equals :func:`edgefpn.runtime.device.device_kind`), the engines are ranked by
their recorded end-to-end p50 latency (model-only where no end-to-end figure is recorded): on the default
model on the 2-core development CPU, ONNX Runtime int8 is the slowest ONNX Runtime engine, which no fixed
order can know. Only without a measurement for this kind of device does the fixed order apply:
TensorRT int8 > fp16 > OpenVINO int8 > fp32 > fp16 > ONNX Runtime int8 > fp32 > fp16 (OpenVINO fp16
and ONNX Runtime fp16 below fp32 because CPUs compute them in f32 anyway or insert casts). The log
says which engine was picked and why.
An engine can run here when its backend record's ``target_problem`` says so (edgefpn.backends): TensorRT
version and compute capability per :func:`edgefpn.backends.tensorrt.compat_problem`; OpenVINO not older
than the one that built the IR; ONNX files on any ONNX Runtime; ExecuTorch programs where executorch and
torch import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgefpn import bundle as bundle_io
from edgefpn.backend_names import BUNDLED
from edgefpn.backends import BACKENDS
from edgefpn.errors import ModelFileError

__all__ = ["PREFERENCE", "rank_engines", "recorded_latencies", "select_engine", "target_problem"]

# The fixed order without a measurement: backends by their record's ``rank``, each in its ``preferred``
# precision order; each in-graph (-e2e) engine right before its raw twin: the same network, with less host
# work per frame.
PREFERENCE: tuple[str, ...] = tuple(
    n
    for b in sorted((b for b in BACKENDS.values() if b.name in BUNDLED), key=lambda b: b.rank)
    for p in b.preferred
    for n in (f"{b.name}-{p}-e2e", f"{b.name}-{p}")
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def target_problem(
    engine: Mapping[str, Any], *, tensorrt_probe: Callable[[], tuple] | None = None
) -> str | None:
    """Why this device cannot run ``engine`` (a bundle manifest entry), or None: its backend record's
    ``target_problem``. Imports no backend."""
    from edgefpn.backends import BACKENDS

    record = BACKENDS.get(engine["backend"])
    if record is None:
        return f"{engine['path']}: unknown backend {engine['backend']!r}"
    return record.target_problem(engine, tensorrt_probe)


def recorded_latencies(report: Mapping[str, Any] | None, kind: str) -> dict[str, float]:
    """Engine name -> recorded p50 latency (ms; end to end, else model-only) from a check report measured
    on a device of ``kind``; empty when the report is absent, from another kind of device, or unreadable."""
    if not isinstance(report, Mapping):
        return {}
    machine = report.get("machine")
    if not isinstance(machine, Mapping) or machine.get("device_kind") != kind:
        return {}
    out: dict[str, float] = {}
    for e in report.get("engines") or []:
        try:
            lat = e.get("latency") or {}
            ms = (lat.get("end_to_end") or lat.get("model_only") or {}).get("p50")
            if isinstance(e["name"], str) and isinstance(ms, (int, float)) and ms > 0:
                out[e["name"]] = float(ms)
        except (AttributeError, KeyError, TypeError):
            continue  # a malformed entry is not a measurement
    return out


def rank_engines(names: Sequence[str], latencies: Mapping[str, float]) -> list[str]:
    """``names`` fastest first by ``latencies``; those without one after, in :data:`PREFERENCE` order."""

    def key(n: str) -> tuple:
        fixed = PREFERENCE.index(n) if n in PREFERENCE else len(PREFERENCE)
        return (0, latencies[n], fixed) if n in latencies else (1, fixed, 0.0)

    return sorted(names, key=key)


def select_engine(
    manifest: Mapping[str, Any],
    bundle: Path,
    *,
    name: str | None = None,
    tensorrt_probe: Callable[[], tuple] | None = None,
    latencies: Mapping[str, float] | None = None,
    kind: str | None = None,
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """The engine to run: ``name`` if given; else the fastest by ``latencies`` (recorded on a device of
    ``kind``, see :func:`recorded_latencies`) that this device can run, the first of :data:`PREFERENCE`
    when none is measured. ``log`` gets one line saying which engine and why.

    Raises:
        ModelFileError: ``name`` is not in the bundle, its target does not match this device, or no
            engine in the bundle can run here (each reason listed on the one line).
    """
    engines = {e["name"]: e for e in manifest.get("engines", [])}
    if name is not None:
        if name not in engines:
            raise ModelFileError(
                f"{bundle}: no engine {name!r} in the bundle (it has: {', '.join(engines) or 'none'})"
            )
        problem = target_problem(engines[name], tensorrt_probe=tensorrt_probe)
        if problem is not None:
            raise ModelFileError(f"{bundle}: {problem}")
        return engines[name]
    latencies = latencies or {}
    reasons = []
    runnable = []
    for candidate in rank_engines(list(engines), latencies):
        problem = target_problem(engines[candidate], tensorrt_probe=tensorrt_probe)
        if problem is None:
            runnable.append(candidate)
        else:
            reasons.append(f"{candidate}: {problem}")
    if runnable:
        pick = runnable[0]
        if pick in latencies:
            others = ", ".join(f"{n} {latencies[n]:.2f} ms" for n in runnable[1:] if n in latencies)
            why = f"fastest recorded on this kind of device ({kind}): p50 {latencies[pick]:.2f} ms" + (
                f" vs {others}" if others else ""
            )
        else:
            why = (
                "no latency recorded for this kind of device"
                + (f" ({kind})" if kind else "")
                + "; first in the fixed order "
                + " > ".join(PREFERENCE)
            )
        skipped = f"; cannot run here: {'; '.join(reasons)}" if reasons else ""
        log(f"[runtime] engine {pick}: {why}{skipped}")
        return engines[pick]
    raise ModelFileError(
        f"{bundle}: no engine in the bundle can run here ({'; '.join(reasons) or 'it has none'})"
    )


def _recorded(manifest: Mapping[str, Any], bundle: Path) -> tuple[dict[str, float], str]:
    """The bundle report's latencies for this kind of device (from the verified tar, nothing extracted)."""
    import json

    from edgefpn.runtime.device import device_kind

    kind = device_kind()
    rel = (manifest.get("report") or {}).get("json")
    if not rel:
        return {}, kind
    try:
        report = json.loads(bundle_io.read_member(bundle, rel))
    except (ValueError, ModelFileError, OSError):  # an unreadable report is no measurement, not an error
        return {}, kind
    return recorded_latencies(report, kind), kind

"""The runtime picks the engine by the latencies its bundle's report recorded for this kind of device."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefpn.runtime import PREFERENCE, rank_engines, recorded_latencies, select_engine

pytest.importorskip("onnxruntime")

KIND = "x86_64 Test CPU"
ENGINES = ("onnxruntime-int8", "onnxruntime-fp32", "onnxruntime-fp16")
MANIFEST = {
    "engines": [
        {"name": n, "backend": "onnxruntime", "precision": n.split("-")[1], "path": f"{n}.onnx"}
        for n in ENGINES
    ]
}


def _report(kind: str, e2e: dict[str, float], model_only: dict[str, float] | None = None) -> dict:
    engines = []
    for name in ENGINES:
        lat = {}
        if name in e2e:
            lat["end_to_end"] = {"p50": e2e[name]}
        if model_only and name in model_only:
            lat["model_only"] = {"p50": model_only[name]}
        engines.append({"name": name, "latency": lat})
    return {"machine": {"device_kind": kind}, "engines": engines}


def _pick(latencies: dict[str, float]) -> tuple[str, str]:
    lines: list[str] = []
    entry = select_engine(MANIFEST, Path("b.tar"), latencies=latencies, kind=KIND, log=lines.append)
    assert len(lines) == 1
    return entry["name"], lines[0]


def test_ranked_by_recorded_latency_on_this_kind_of_device():
    lat = recorded_latencies(
        _report(KIND, {"onnxruntime-int8": 30.0, "onnxruntime-fp32": 11.0, "onnxruntime-fp16": 12.5}), KIND
    )
    name, line = _pick(lat)
    assert name == "onnxruntime-fp32"  # not int8, which the fixed order puts first
    assert (
        "fastest recorded on this kind of device (x86_64 Test CPU)" in line
        and "onnxruntime-int8 30.00 ms" in line
    )
    assert rank_engines(list(ENGINES), lat) == ["onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8"]


def test_model_only_when_no_end_to_end_and_unmeasured_engines_last():
    lat = recorded_latencies(_report(KIND, {}, model_only={"onnxruntime-fp16": 9.0}), KIND)
    assert lat == {"onnxruntime-fp16": 9.0}
    assert rank_engines(list(ENGINES), lat) == ["onnxruntime-fp16", "onnxruntime-int8", "onnxruntime-fp32"]
    assert _pick(lat)[0] == "onnxruntime-fp16"


@pytest.mark.parametrize(
    "report",
    [
        None,  # the bundle has no report
        _report("aarch64 Another Board", {"onnxruntime-fp32": 5.0}),  # measured on another kind of device
        {"engines": [{"name": "onnxruntime-fp32", "latency": {"end_to_end": {"p50": 5.0}}}]},  # an old report
        {"machine": {"device_kind": KIND}, "engines": [{"name": 3, "latency": "x"}, "junk"]},  # malformed
    ],
)
def test_fixed_order_only_without_a_measurement(report):
    lat = recorded_latencies(report, KIND)
    assert lat == {}
    name, line = _pick(lat)
    assert name == PREFERENCE[PREFERENCE.index("onnxruntime-int8")] == "onnxruntime-int8"
    assert "no latency recorded for this kind of device" in line and "fixed order" in line


def test_check_report_records_the_device_kind():
    from edgefpn.report.check_md import system_info
    from edgefpn.runtime.device import device_kind

    assert system_info(1)["device_kind"] == device_kind() != ""

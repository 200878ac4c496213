"""Issue 15's floors for the end-to-end contract, read from a check report.json.

    .venv/bin/python benchmarks/e2e/floors.py runs/e2e-default/report.json

Prints the raw-vs-in-graph table of the report and, per floor, the figure and PASS/FAIL:

* ONNX Runtime and OpenVINO FP32 in-graph engines vs their raw twins: matched fraction >= 0.99,
  mean IoU >= 0.99, max score error <= 1e-4, |mAP difference| <= 0.05;
* INT8 in-graph engines within the INT8 mAP gate (check.max_map_drop.int8 against the reference);
* the fastest in-graph engine's end-to-end p50 (image file -> detections, deploy threshold) <= 1.2x
  the model-only p50 of its raw twin (the bare network), both from the same check run.
Exit status 1 when a floor fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgefpn.report.check_md import contract_rows


def main(path: str) -> int:
    report = json.loads(Path(path).read_text())
    engines = {e["name"]: e for e in report["engines"]}
    head, rows = contract_rows(report)
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    failed = 0

    def floor(ok: bool, text: str) -> None:
        nonlocal failed
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {text}")

    in_graph = [e for e in engines.values() if e.get("twin") and e["twin"].get("present")]
    for e in in_graph:
        t, raw = e["twin"], engines[e["twin"]["engine"]]
        if e["precision"] == "fp32" and e["backend"] in ("onnxruntime", "openvino"):
            floor(
                t["matched_fraction"] >= 0.99,
                f"{e['name']}: matched fraction {t['matched_fraction']:.4f} >= 0.99",
            )
            floor(t["mean_iou"] >= 0.99, f"{e['name']}: mean IoU {t['mean_iou']:.5f} >= 0.99")
            floor(
                t["max_score_error"] <= 1e-4,
                f"{e['name']}: max score error {t['max_score_error']:.2e} <= 1e-4",
            )
            d = e["map"] - raw["map"]
            floor(
                abs(d) <= 0.05, f"{e['name']}: mAP {e['map']:.3f} vs {raw['map']:.3f} ({d:+.3f}, within 0.05)"
            )
        if e["precision"] == "int8":
            gate = e["gates"]["max_map_drop"]
            floor(
                abs(e["map_delta"]) <= gate,
                f"{e['name']}: mAP delta {e['map_delta']:+.3f} within the INT8 gate ±{gate}",
            )
    if in_graph:
        fastest = min(in_graph, key=lambda e: e["latency"]["end_to_end"]["p50"])
        raw = engines[fastest["twin"]["engine"]]
        e2e, model = fastest["latency"]["end_to_end"]["p50"], raw["latency"]["model_only"]["p50"]
        floor(
            e2e <= 1.2 * model,
            f"fastest in-graph engine {fastest['name']}: end-to-end p50 {e2e:.2f} ms = "
            f"{e2e / model:.2f}x the model-only p50 {model:.2f} ms of {raw['name']} (<= 1.2x; deploy "
            f"threshold {fastest['latency']['end_to_end'].get('score_thresh')})",
        )
        fastest_raw = min(
            (engines[e["twin"]["engine"]] for e in in_graph), key=lambda e: e["latency"]["end_to_end"]["p50"]
        )
        print(
            f"      for comparison, the fastest raw engine end to end: {fastest_raw['name']} "
            f"{fastest_raw['latency']['end_to_end']['p50']:.2f} ms"
        )
    else:
        floor(False, "no in-graph engine with its raw twin in the report")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "runs/e2e-default/report.json"))

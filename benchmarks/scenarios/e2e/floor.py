"""Issue 14's streaming floor from one benchmark.json: streaming FPS / offline FPS of the same engine.

.venv/bin/python benchmarks/scenarios/e2e/floor.py benchmarks/scenarios/e2e/benchmark.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FLOOR = 0.85


def main(path: Path) -> int:
    report = json.loads(path.read_text())
    print(
        f"{'engine':<22} {'offline':>9} {'stream deploy':>14} {'ratio':>6} {'stream eval':>12} {'ratio':>6}"
    )
    worst = None
    for e in report["engines"]:
        sc = e.get("scenarios") or {}
        off, st = sc.get("offline", {}).get("fps"), sc.get("streaming", {})
        if not off or "deploy" not in st:
            continue
        d, v = st["deploy"]["fps"], st["eval"]["fps"]
        print(f"{e['name']:<22} {off:>9.1f} {d:>14.1f} {d / off:>6.2f} {v:>12.1f} {v / off:>6.2f}")
        if e["name"] == "openvino-int8-e2e":
            worst = d / off
    if worst is None:
        print("openvino-int8-e2e: no streaming and offline figures in this report")
        return 1
    verdict = "pass" if worst >= FLOOR else "FAIL"
    print(f"openvino-int8-e2e streaming (deploy) / offline = {worst:.2f} (floor {FLOOR}): {verdict}")
    return 0 if worst >= FLOOR else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))

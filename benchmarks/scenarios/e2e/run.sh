#!/bin/bash
# Issue 14's streaming floor on the in-graph engines: `edgefpn benchmark` on a copy of the default run with
# the end-to-end contract (uint8 image in, decode + NMS in the graph), OpenVINO engines, one process.
# Usage: benchmarks/scenarios/e2e/run.sh RUN_DIR   (RUN_DIR: a copy of a default `make all` run; the
# e2e engines are grafted by `edgefpn build` first, training/export/quantize are up to date)
set -u
cd "$(dirname "$0")/../../.."
RUN=${1:?RUN_DIR}
OUT=benchmarks/scenarios/e2e
SETS=(--set export.input=uint8 --set export.nms=true --set "build.targets=[openvino]" --set "check.backends=[openvino]")
.venv/bin/edgefpn build --config configs/default.yaml --out "$RUN" "${SETS[@]}" --quiet || exit $?
{ echo "start $(date -u +%FT%TZ) $(git rev-parse --short HEAD)"; uptime; } > "$OUT/load.txt"
.venv/bin/edgefpn benchmark --config configs/default.yaml --out "$RUN" "${SETS[@]}" --force \
  --iters 200 --app-seconds 6 --app-rounds 3 --throughput-seconds 3 --stream-frames 1000 > "$OUT/benchmark.log" 2>&1
rc=$?
{ echo "end $(date -u +%FT%TZ) rc=$rc"; uptime; } >> "$OUT/load.txt"
cp "$RUN/benchmark.json" "$RUN/benchmark.md" "$OUT/" 2>/dev/null
.venv/bin/python benchmarks/scenarios/e2e/floor.py "$OUT/benchmark.json"
exit $rc

#!/bin/bash
# Named scenarios + benchmark_app agreement on the reference default-size run (1-epoch model, fp32 recipe),
# engines at the run's own batch 1. Run from the repository root; runs/default = copy of /work/ref/runs/default.
set -u
OUT=benchmarks/scenarios/main
SETS=(--set train.amp=off --set train.channels_last=false --set train.epochs=1)  # how runs/default was trained
{ echo "start $(date -u +%FT%TZ)"; uptime; } > "$OUT/load.txt"
nice -n 5 .venv/bin/edgefpn benchmark --config configs/default.yaml "${SETS[@]}" --out runs/default \
  --iters 40 --app-seconds 6 --app-rounds 3 --throughput-seconds 1 > "$OUT/benchmark.log" 2>&1
rc=$?
{ echo "end $(date -u +%FT%TZ) rc=$rc"; uptime; } >> "$OUT/load.txt"
cp runs/default/benchmark.json runs/default/benchmark.md "$OUT/" 2>/dev/null
exit $rc

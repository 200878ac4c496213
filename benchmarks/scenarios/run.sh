#!/bin/bash
# The issue-14 measurement: named scenarios + batch sweep (1, 2, 4, 8) + benchmark_app agreement on the
# default run, one process, ours and benchmark_app interleaved. Run from the repository root after the
# default run exists in runs/default (here: a copy of the lead's fresh-clone `make all`, fp32 recipe).
set -u
OUT=benchmarks/scenarios
SETS=()  # runs/default: a copy of a default `make all` run (the trained default model)
{ echo "start $(date -u +%FT%TZ)"; uptime; } > "$OUT/load.txt"
nice -n 5 .venv/bin/edgefpn benchmark --config configs/default.yaml ${SETS[@]+"${SETS[@]}"} --out runs/default \
  --batch 1,2,4,8 --iters 40 --app-seconds 6 --app-rounds 3 --throughput-seconds 1 > "$OUT/benchmark.log" 2>&1
rc=$?
{ echo "end $(date -u +%FT%TZ) rc=$rc"; uptime; } >> "$OUT/load.txt"
cp runs/default/benchmark.json runs/default/benchmark.md "$OUT/" 2>/dev/null
exit $rc

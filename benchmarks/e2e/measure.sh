#!/bin/bash
# Issue 15's end-to-end floors, measured in ONE run on a copy of the default-size run dir (see README.md).
# Usage: benchmarks/e2e/measure.sh [RUN_DIR]   (RUN_DIR holds a copy of the reference run's model.pt)
set -u
cd "$(dirname "$0")/../.."
RUN=${1:-runs/e2e-default}
uptime
# The reference model of this session: the default-size model trained 1 epoch in fp32 (the lead's
# /work/ref run); these three keys must match its training settings or every stage refuses.
nice -n 5 .venv/bin/edgefpn run --config configs/default.yaml --out "$RUN" \
  --set train.amp=off --set train.channels_last=false --set train.epochs=1 --set run.threads=1 \
  --set export.input=uint8 --set export.nms=true
rc=$?
uptime
echo "edgefpn run rc=$rc"
.venv/bin/python benchmarks/e2e/floors.py "$RUN/report.json"

#!/bin/bash
# Issue 15's end-to-end floors, measured in ONE run on a copy of the default-size run dir (see README.md).
# Usage: benchmarks/e2e/measure.sh [RUN_DIR]   (RUN_DIR holds a copy of the reference run's model.pt)
set -u
cd "$(dirname "$0")/../.."
RUN=${1:-runs/e2e-default}
uptime
# RUN_DIR: a copy of a default `make all` run (the trained default model; training is then skipped as
# up to date). Everything after training is redone with the in-graph contract.
.venv/bin/edgefpn run --config configs/default.yaml --out "$RUN" \
  --set export.input=uint8 --set export.nms=true
rc=$?
uptime
echo "edgefpn run rc=$rc"
.venv/bin/python benchmarks/e2e/floors.py "$RUN/report.json"

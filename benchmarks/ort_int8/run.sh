#!/usr/bin/env bash
# The ORT INT8 measurement of benchmarks/ort_int8/README.md: the default architecture and input size,
# trained briefly (the default run was not available in time), then quantize -> build -> check with the
# default check settings (200 latency samples, 200 paired INT8/FP32 iterations per backend).
set -euo pipefail
cd "$(dirname "$0")/../.."
SET=(--set data.root=data/synth-ort --set data.synth.num_train=240 --set train.epochs=1 --set train.eval_every=0
     --set run.out=runs/ort_int8)
uptime
nice -n 5 .venv/bin/edgefpn train --config configs/default.yaml "${SET[@]}" --quiet
uptime
nice -n 5 .venv/bin/edgefpn check --config configs/default.yaml "${SET[@]}" || echo "check rc=$?"
uptime

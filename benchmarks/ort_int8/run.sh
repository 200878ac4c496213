#!/usr/bin/env bash
# The measurement of benchmarks/ort_int8/README.md, in a copy of the lead's reference run dir: the
# default-size model trained for ONE epoch in fp32 (this machine has no AVX-512 today; see the README).
#   cp -a /work/ref/runs/default runs/default && cp -a /work/ref/data/synth data/synth
set -euo pipefail
cd "$(dirname "$0")/../.."
SET=(--set train.amp=off --set train.channels_last=false --set train.epochs=1)
uptime
nice -n 5 .venv/bin/edgefpn check --config configs/default.yaml "${SET[@]}" || echo "check rc=$?"
uptime

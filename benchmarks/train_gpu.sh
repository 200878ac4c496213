#!/usr/bin/env bash
# On a machine with CUDA: train the default model (configs/default.yaml) for 200 steps with bf16 AMP
# on one GPU, then print the training images/s and the val mAP (the whole val split, evaluated at the
# end of training by the same code as `check`).
#
#   benchmarks/train_gpu.sh [OUT_DIR] [extra --set overrides...]
#
# 200 steps = 1 epoch of the built-in 2000 training images at batch_size 10 (train.epochs must be a
# whole number of epochs; the global batch is what sets the step count). Needs `make setup` first.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/train_gpu}
shift || true
PY=.venv/bin/python
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "error: no CUDA device visible to torch")'
"$PY" -m edgefpn train --config configs/default.yaml --out "$OUT" --force \
    --set train.device=cuda --set train.amp=bf16 --set train.workers=4 \
    --set train.epochs=1 --set train.batch_size=10 --set train.warmup_iters=20 --set train.eval_every=1 "$@"
"$PY" - "$OUT" <<'PY'
import sys, torch
meta = torch.load(f"{sys.argv[1]}/model.pt", weights_only=True, map_location="cpu")["meta"]["train"]
last = meta["history"][-1]
steps = len(meta["step_loss"])
print(f"device {meta['device']}, amp {meta['config']['amp']}, {steps} steps x batch {meta['config']['batch_size']}")
print(f"images/s {last['images_per_s']}  (training loop, epoch {last['epoch']})")
print(f"val mAP  {last['val_map']}  (full val split, {last['val_detections']} detections)")
PY

"""One training step of the default model in fp32 and in bf16 autocast, back to back (1 thread, batch 8).

Tells in a minute whether this CPU should train with ``train.amp=bf16``: on an AVX2-only CPU bf16 autocast
falls back to ``slow_conv2d`` (benchmarks/train_speed.md, 2026-12-02: fp32 13.1 s, bf16 164.2 s per step
under load 15). ``train.amp=auto`` makes the same decision from
``torch.ops.mkldnn._is_mkldnn_bf16_supported()``.

    .venv/bin/python benchmarks/amp_step.py --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    import torch

    from edgefpn.config import load_config
    from edgefpn.pipeline.train import _build

    torch.set_num_threads(1)
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = _build(cfg, 7).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(8, 3, *cfg.model.input_size, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[20.0, 30.0, 80.0, 90.0], [100.0, 100.0, 140.0, 160.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2])} for _ in range(8)]

    def step(bf16: bool) -> float:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        t0 = time.perf_counter()
        with ctx:
            losses = model(images, targets)
        loss = sum(v.float() for v in losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    print(
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}, "
        f"oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}",
        flush=True,
    )
    step(False)  # warm-up
    for r in range(args.rounds):
        a, b = step(False), step(True)
        print(
            f"round {r}: fp32 {a:.2f} s, bf16 {b:.2f} s, bf16/fp32 {b / a:.2f}x, "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

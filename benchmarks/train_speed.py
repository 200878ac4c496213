"""Training speed of the default model: fp32 vs bf16 autocast, contiguous vs channels-last, loader workers.

Every variant trains its own copy of the default model (same seed, same initial weights) on the
built-in training split through the real ``DetectionDataset`` + ``DataLoader`` (decode, letterbox,
flip included), with AdamW and the default's batch size and thread count. The variants run
**interleaved in this one process**: each round gives every variant ``--steps`` timed steps in turn,
so machine load (other processes on the shared cores) falls on all of them alike. The report is the
median images/s of each variant over the rounds and its ratio to today's fp32 contiguous, 0 workers.

    .venv/bin/python benchmarks/train_speed.py                 # -> benchmarks/train_speed.json
    .venv/bin/python benchmarks/train_speed.py --rounds 2 --steps 3 --json /tmp/s.json   # smoke

The dataset must exist (``edgefpn data --config configs/default.yaml``). Absolute images/s are noise
on a shared machine; the ratios, measured side by side, are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Variant:
    name: str
    amp: str  # off | bf16
    channels_last: bool
    workers: int


VARIANTS = (
    Variant("fp32 contiguous, 0 workers (today)", "off", False, 0),
    Variant("fp32 channels-last, 0 workers", "off", True, 0),
    Variant("bf16 contiguous, 0 workers", "bf16", False, 0),
    Variant("bf16 channels-last, 0 workers", "bf16", True, 0),
    Variant("fp32 contiguous, 1 worker", "off", False, 1),
    Variant("fp32 contiguous, 2 workers", "off", False, 2),
    Variant("bf16 contiguous, 1 worker", "bf16", False, 1),
)


class Runner:
    """One variant's model, optimiser and endless batch iterator."""

    def __init__(self, v: Variant, cfg, split, num_classes: int) -> None:
        import torch
        from torch.utils.data import DataLoader

        from edgefpn.data.torch_dataset import DetectionDataset, collate
        from edgefpn.pipeline.train import _build

        self.v = v
        torch.manual_seed(cfg.run.seed)
        self.fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        self.model = _build(cfg, num_classes).to(memory_format=self.fmt).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.params = params
        self.opt = torch.optim.AdamW(params, lr=cfg.train.lr * 0.1, weight_decay=cfg.train.weight_decay)
        ds = DetectionDataset(split, size=cfg.model.input_size, mean=cfg.model.mean, std=cfg.model.std,
                              hflip=cfg.train.hflip)
        gen = torch.Generator().manual_seed(cfg.run.seed)
        self.loader = DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                                 collate_fn=collate, generator=gen, num_workers=v.workers,
                                 persistent_workers=v.workers > 0, prefetch_factor=2 if v.workers else None)
        self.it = iter(self.loader)
        self.batch = cfg.train.batch_size

    def _next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def steps(self, n: int) -> float:
        """Run ``n`` training steps; images/s over them (loading included)."""
        import torch

        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if self.v.amp == "bf16" \
            else contextlib.nullcontext
        t0 = time.perf_counter()
        for _ in range(n):
            images, targets = self._next()
            images = images.to(memory_format=self.fmt)
            with ctx():
                losses = self.model(images, targets)
            loss = sum(v.float() for v in losses.values())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 10.0)
            self.opt.step()
        return n * self.batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before round 1")
    ap.add_argument("--json", default=str(HERE / "train_speed.json"))
    args = ap.parse_args(argv)

    import torch

    from edgefpn.config import load_config
    from edgefpn.pipeline import data as data_stage

    cfg = load_config(args.config)
    torch.set_num_threads(cfg.run.threads)
    data = data_stage.run(cfg, progress=False)
    split = data.split(cfg.data.train_split)
    num_classes = cfg.model.num_classes or len(split.class_names)
    runners = [Runner(v, cfg, split, num_classes) for v in VARIANTS]
    for r in runners:
        r.steps(args.warmup)
    rates: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    for k in range(args.rounds):
        for r in runners if k % 2 == 0 else reversed(runners):  # alternate the order: no variant always first
            rates[r.v.name].append(r.steps(args.steps))
        print(f"round {k + 1}/{args.rounds}: " + ", ".join(f"{n}={x[-1]:.1f}" for n, x in rates.items()),
              file=sys.stderr, flush=True)
    base = statistics.median(rates[VARIANTS[0].name])
    rows = []
    for v in VARIANTS:
        med = statistics.median(rates[v.name])
        rows.append({"variant": v.name, "amp": v.amp, "channels_last": v.channels_last, "workers": v.workers,
                     "images_per_s_median": round(med, 2), "ratio_vs_today": round(med / base, 3),
                     "images_per_s_rounds": [round(x, 2) for x in rates[v.name]]})
    report = {"config": args.config, "rounds": args.rounds, "steps_per_round": args.steps,
              "batch_size": cfg.train.batch_size, "threads": cfg.run.threads,
              "input_size": list(cfg.model.input_size), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "rows": rows}
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    for row in rows:
        print(f"{row['variant']:<40} {row['images_per_s_median']:7.2f} img/s  x{row['ratio_vs_today']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

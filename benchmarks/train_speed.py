"""Training speed of the default model: fp32 vs bf16 autocast, contiguous vs channels-last, and the share
of a step that data loading takes (what DataLoader workers could hide at most).

Built for a loaded, shared machine, where a block of steps of one variant and then a block of another
sees different load: the variants are interleaved **step by step**. Every round loads one batch from
the real training split (``DetectionDataset``: decode, letterbox, flip; timed: ``load``), then runs one
training step on that same batch for each compute variant in turn (rotating which goes first), each on
its own copy of the default model (same seed, same initial weights, AdamW, the default's batch size and
thread count). The result is the median seconds per step of each variant and its ratio to today's fp32
contiguous; the load share is median load / (median load + median fp32 step).

Workers are not timed inside this loop: persistent workers would prefetch while the other variants
run, a free lunch that no real run gets. With 0 workers a step costs load + compute; on these 2 cores a
worker can at best hide the load share (it competes with torch's 2 threads for the same cores).

    .venv/bin/python benchmarks/train_speed.py                       # -> benchmarks/train_speed.json
    .venv/bin/python benchmarks/train_speed.py --rounds 3 --json /tmp/s.json   # smoke

The dataset must exist (``edgefpn data --config configs/default.yaml``).
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


VARIANTS = (
    Variant("fp32 contiguous (today)", "off", False),
    Variant("fp32 channels-last", "off", True),
    Variant("bf16 contiguous", "bf16", False),
    Variant("bf16 channels-last", "bf16", True),
)


class Runner:
    """One variant's model and optimiser."""

    def __init__(self, v: Variant, cfg, num_classes: int) -> None:
        import torch

        from edgefpn.pipeline.train import _build

        self.v = v
        torch.manual_seed(cfg.run.seed)
        self.fmt = torch.channels_last if v.channels_last else torch.contiguous_format
        self.model = _build(cfg, num_classes).to(memory_format=self.fmt).train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.train.lr * 0.1, weight_decay=cfg.train.weight_decay)
        self.losses: list[float] = []

    def step(self, images, targets) -> float:
        """One training step on the batch; its seconds."""
        import torch

        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.v.amp == "bf16" else contextlib.nullcontext()
        )
        t0 = time.perf_counter()
        images = images.to(memory_format=self.fmt)
        with ctx:
            losses = self.model(images, targets)
        loss = sum(v.float() for v in losses.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 10.0)
        self.opt.step()
        self.losses.append(float(loss.detach()))
        return time.perf_counter() - t0


def _write(args, cfg, times: dict[str, list[float]], load: list[float], runners: list[Runner]) -> dict:
    import torch

    batch = cfg.train.batch_size
    base = statistics.median(times[VARIANTS[0].name])
    med_load = statistics.median(load)
    rows = []
    for v, r in zip(VARIANTS, runners, strict=True):
        med = statistics.median(times[v.name])
        # per round, this variant's step against today's on the same batch moments apart: robust to load
        paired = [b / t for b, t in zip(times[VARIANTS[0].name], times[v.name], strict=True)]
        rows.append(
            {
                "variant": v.name,
                "amp": v.amp,
                "channels_last": v.channels_last,
                "step_s_median": round(med, 4),
                "speedup_vs_today": round(base / med, 3),
                "paired_speedup_median": round(statistics.median(paired), 3),
                "paired_rounds_faster": sum(x > 1 for x in paired),
                "step_s_rounds": [round(t, 4) for t in times[v.name]],
                "images_per_s_0_workers": round(batch / (med + med_load), 2),
                "speedup_with_loading_0_workers": round((base + med_load) / (med + med_load), 3),
                "loss_first": round(r.losses[0], 4),
                "loss_last": round(r.losses[-1], 4),
            }
        )
    report = {
        "config": args.config,
        "rounds": len(load),
        "batch_size": batch,
        "threads": cfg.run.threads,
        "input_size": list(cfg.model.input_size),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "load_batch_s_median": round(med_load, 4),
        "load_share_of_fp32_step": round(med_load / (med_load + base), 3),
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first (oneDNN kernel creation)")
    ap.add_argument("--json", default=str(HERE / "train_speed.json"))
    args = ap.parse_args(argv)

    import torch

    from edgefpn.config import load_config
    from edgefpn.data.torch_dataset import DetectionDataset, collate
    from edgefpn.pipeline import data as data_stage

    cfg = load_config(args.config)
    torch.set_num_threads(cfg.run.threads)
    data = data_stage.run(cfg, progress=False)
    split = data.split(cfg.data.train_split)
    num_classes = cfg.model.num_classes or len(split.class_names)
    ds = DetectionDataset(
        split, size=cfg.model.input_size, mean=cfg.model.mean, std=cfg.model.std, hflip=cfg.train.hflip
    )
    runners = [Runner(v, cfg, num_classes) for v in VARIANTS]
    times: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    load: list[float] = []
    batch = cfg.train.batch_size
    for k in range(args.warmup + args.rounds):
        t0 = time.perf_counter()
        images, targets = collate([ds[(k * batch + i) % len(ds)] for i in range(batch)])
        t_load = time.perf_counter() - t0
        order = runners[k % len(runners) :] + runners[: k % len(runners)]
        step_times = {r.v.name: r.step(images, targets) for r in order}
        if k < args.warmup:
            continue
        load.append(t_load)
        for name, t in step_times.items():
            times[name].append(t)
        report = _write(args, cfg, times, load, runners)
        print(
            f"round {k + 1 - args.warmup}/{args.rounds}: load {t_load:.3f}s "
            + ", ".join(f"{n} {t:.3f}s" for n, t in step_times.items()),
            file=sys.stderr,
            flush=True,
        )
    for row in report["rows"]:
        print(
            f"{row['variant']:<28} step {row['step_s_median']:.3f}s  x{row['speedup_vs_today']:.3f}  "
            f"paired x{row['paired_speedup_median']:.3f}  "
            f"(with loading, 0 workers: x{row['speedup_with_loading_0_workers']:.3f})"
        )
    print(
        f"loading one batch: {report['load_batch_s_median']:.3f}s = {report['load_share_of_fp32_step']:.1%} "
        f"of a fp32 step + load"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

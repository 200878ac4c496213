"""Training throughput of the default recipe against the DataLoader worker count (``train.workers``).

``train_speed.py`` times the compute variants step by step on one batch and leaves the loader out. This
script times what a real run does: the default config's model and recipe (bf16 autocast +
channels-last), fed by ``edgefpn.training.loop.build_loader`` with 0, 1 and 2 workers, each loader
persistent as in training. Built for a shared machine: the settings take turns in blocks of
``--block`` steps (rotating which goes first), so each sees the same load; the first ``--skip`` steps
of a block are not timed, because a persistent loader prefetches while the other settings run
(a free lunch no real run gets). Reported: images/s per setting (median over blocks) and its ratio
to 0 workers, paired block by block.

    .venv/bin/python benchmarks/train_workers.py                 # -> benchmarks/train_workers.json
    .venv/bin/python benchmarks/train_workers.py --rounds 2 --json /tmp/w.json   # smoke

The dataset must exist (``edgefpn data --config configs/default.yaml``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/default.yaml"))
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--block", type=int, default=16, help="steps per setting per round")
    ap.add_argument("--skip", type=int, default=4, help="untimed steps at the start of each block")
    ap.add_argument("--json", default=str(HERE / "train_workers.json"))
    args = ap.parse_args(argv)
    if args.block <= args.skip:
        ap.error(f"--block must exceed --skip, got {args.block} and {args.skip}")

    import torch

    from edgefpn.config import load_config
    from edgefpn.data.torch_dataset import DetectionDataset
    from edgefpn.pipeline import data as data_stage
    from edgefpn.pipeline.train import _build
    from edgefpn.training.distributed import Dist
    from edgefpn.training.loop import build_loader

    cfg = load_config(args.config)
    torch.set_num_threads(cfg.run.threads)
    data = data_stage.run(cfg, progress=False)
    split = data.split(cfg.data.train_split)
    num_classes = cfg.model.num_classes or len(split.class_names)
    ds = DetectionDataset(
        split,
        size=cfg.model.input_size,
        mean=cfg.model.mean,
        std=cfg.model.std,
        hflip=cfg.train.hflip,
        augment=cfg.train.augment,
        seed=cfg.run.seed,
    )
    dist = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    settings = [int(w) for w in args.workers.split(",")]
    iters = {}
    for w in settings:
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, workers=w))
        loader, _ = build_loader(c, ds, dist)
        iters[w] = _endless(loader)

    torch.manual_seed(cfg.run.seed)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = _build(cfg, num_classes).to(memory_format=fmt).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr * 0.1, weight_decay=cfg.train.weight_decay)
    amp = cfg.train.amp == "bf16"

    def step(images, targets) -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with ctx:
            losses = model(images.to(memory_format=fmt), targets)
        loss = sum(v.float() for v in losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rates: dict[int, list[float]] = {w: [] for w in settings}
    for r in range(args.rounds):
        order = settings[r % len(settings) :] + settings[: r % len(settings)]
        for w in order:
            for i in range(args.block):
                if i == args.skip:
                    t0 = time.perf_counter()
                images, targets = next(iters[w])
                step(images, targets)
            rates[w].append((args.block - args.skip) * cfg.train.batch_size / (time.perf_counter() - t0))
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{w} workers {rates[w][-1]:.1f} img/s" for w in settings),
            f"(load {os.getloadavg()[0]:.1f})",
            flush=True,
        )

    base = settings[0]
    rows = [
        {
            "workers": w,
            "images_per_s_median": round(statistics.median(rates[w]), 2),
            "paired_ratio_median": round(
                statistics.median(a / b for a, b in zip(rates[w], rates[base], strict=True)), 3
            ),
            "images_per_s_rounds": [round(x, 2) for x in rates[w]],
        }
        for w in settings
    ]
    report = {
        "config": args.config,
        "amp": cfg.train.amp,
        "channels_last": cfg.train.channels_last,
        "threads": cfg.run.threads,
        "batch_size": cfg.train.batch_size,
        "rounds": args.rounds,
        "block": args.block,
        "skip": args.skip,
        "torch": torch.__version__,
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    for row in rows:
        print(
            f"{row['workers']} workers: {row['images_per_s_median']} img/s, "
            f"paired vs {base} workers {row['paired_ratio_median']}x"
        )
    return 0


def _endless(loader):
    while True:
        yield from loader


if __name__ == "__main__":
    raise SystemExit(main())

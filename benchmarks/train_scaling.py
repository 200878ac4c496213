"""Training images/s: 1 process x T threads vs N torchrun processes x T/N threads, same global batch.

Runs the configurations alternately (A B A B ...) in one session so that a machine shared with other
work loads both alike, and prints each run's images/s (from model.pt's meta: global images per
second of the training loop, evaluation excluded) and the per-step loss agreement.

    .venv/bin/python benchmarks/train_scaling.py [--threads 2] [--nproc 2] [--repeats 2] [--device cpu]

On a GPU box: --device cuda --nproc <GPUs> (threads then only feed the loader: see train_scaling.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-train", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgefpn-scaling."))
    sets = [
        "data.root=" + str(tmp / "data"),
        f"data.synth.num_train={args.num_train}",
        "data.synth.num_val=8",
        "data.synth.num_calib=8",
        "train.epochs=1",
        f"train.batch_size={args.batch}",
        "train.eval_every=0",
        f"train.device={args.device}",
    ]
    base = [
        str(VENV / "python"),
        "-m",
        "edgefpn",
        "train",
        "--quiet",
        "--force",
        "--config",
        "configs/default.yaml",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [
            str(VENV / "python"),
            "-m",
            "edgefpn",
            "data",
            "--quiet",
            "--config",
            "configs/default.yaml",
            *[x for s in sets for x in ("--set", s)],
        ],
        cwd=REPO,
        env=env,
        check=True,
    )
    runs = {
        f"1 process x {args.threads} threads": (base, args.threads),
        f"{args.nproc} processes x {max(1, args.threads // args.nproc)} thread(s)": (
            [str(VENV / "torchrun"), "--standalone", "--nproc-per-node", str(args.nproc), *base[1:]],
            max(1, args.threads // args.nproc),
        ),
    }
    results: dict[str, list[float]] = {k: [] for k in runs}
    losses: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        for name, (cmd, threads) in runs.items():
            out = tmp / f"run{rep}-{len(results[name])}-{name[0]}"
            full = [
                *cmd,
                "--out",
                str(out),
                *[x for s in [*sets, f"run.threads={threads}"] for x in ("--set", s)],
            ]
            subprocess.run(
                full,
                cwd=REPO,
                env={**env, "OMP_NUM_THREADS": str(threads)},
                check=True,
                stdout=subprocess.DEVNULL,
            )
            meta = torch.load(out / "model.pt", weights_only=True)["meta"]["train"]
            results[name].append(meta["history"][-1]["images_per_s"])
            losses[name] = meta["step_loss"]
            print(f"{name}: {results[name][-1]:.2f} images/s", flush=True)
    la, lb = losses.values()
    rel = max(abs(x - y) / abs(y) for x, y in zip(la, lb, strict=True))
    print("\nmedian images/s: " + ", ".join(f"{k}: {sorted(v)[len(v) // 2]:.2f}" for k, v in results.items()))
    print(f"per-step loss, max relative difference between the two ({len(la)} steps): {rel:.2e}")


if __name__ == "__main__":
    main()

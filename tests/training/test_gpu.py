"""CUDA paths of training: device placement, AMP (fp16 with a GradScaler, bf16), NCCL with one rank.

Run where CUDA exists; skipped with the reason elsewhere. Whatever the device and precision,
model.pt holds float32 CPU tensors that load without a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgefpn.config import load_config
from tests.conftest import TINY
from tests.security.harness import EMPTY_CONFIG

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA GPU visible (torch.cuda.is_available() is false)"
    ),
]

SETS = [
    *TINY,
    "data.synth.num_train=8",
    "model.backbone_width=32",
    "model.input_size=[128, 128]",
    "train.epochs=2",
    "train.eval_every=2",
]


def _assert_cpu_float32(ckpt: dict) -> None:
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())
    assert {v.dtype for v in ckpt["state_dict"].values() if v.is_floating_point()} == {torch.float32}


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_trains_on_cuda_and_saves_cpu_float32(tmp_path, amp):
    from edgefpn.pipeline import train

    cfg = load_config(
        EMPTY_CONFIG,
        [*SETS, f"data.root={tmp_path / 'data'}", "train.device=cuda", f"train.amp={amp}", "train.workers=2"],
    )
    ckpt = torch.load(
        train.run(cfg, tmp_path / "run", progress=False).path, weights_only=True, map_location="cpu"
    )
    assert ckpt["meta"]["train"]["device"] == "cuda:0" and ckpt["meta"]["train"]["config"]["amp"] == amp
    assert all(torch.isfinite(torch.tensor(ckpt["meta"]["train"]["step_loss"])))
    _assert_cpu_float32(ckpt)


def test_nccl_with_one_rank(tmp_path):
    sets = [
        x
        for s in [*SETS, f"data.root={tmp_path / 'data'}", "train.device=cuda", "train.amp=bf16"]
        for x in ("--set", s)
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    res = subprocess.run(
        [
            str(Path(sys.executable).with_name("torchrun")),
            "--standalone",
            "--nproc-per-node",
            "1",
            "-m",
            "edgefpn",
            "train",
            "--config",
            str(EMPTY_CONFIG),
            "--out",
            str(tmp_path / "run"),
            *sets,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "on 1 ranks (nccl), cuda:0, amp bf16" in res.stderr
    _assert_cpu_float32(torch.load(tmp_path / "run" / "model.pt", weights_only=True))

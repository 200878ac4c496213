"""torchrun on CPU (Gloo): 2 ranks compute what 1 process computes, only rank 0 writes, a killed rank
ends the job and its resume state continues on another world size.

Each torchrun launch starts Python processes that import torch, so the checks share launches: one
complete 2-rank run, one 2-rank run whose rank 1 is killed (then resumed by 1 process), one refused
launch. Tiny model (slim ResNet-18, 128 px), 8 images, 1 thread per rank.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgefpn.artifacts import read_manifest, sha256_file
from edgefpn.config import load_config
from tests.conftest import TINY
from tests.security.harness import EMPTY_CONFIG

pytestmark = pytest.mark.slow

TORCHRUN = Path(sys.executable).with_name("torchrun")
REPO = Path(__file__).resolve().parents[2]
# The tiny run with a trainable-BN slim backbone. The ranks' BatchNorm statistics are float32 sums in
# another order than torch's single-process kernel; SGD amplifies that rounding step by step (at
# lr 0.02 to 2e-3 in the loss after 6 steps; at 0.002, 8 steps stay under 5e-5). One process running
# the ranks' two-pass BN arithmetic matches the 2-rank losses to 7e-7 (benchmarks/train_scaling.md).
WEIGHTS = {"rtol": 1e-3, "atol": 1e-3}  # the same rounding in the weights and BN running statistics
DDP = [
    *TINY,
    "data.synth.num_train=8",
    "model.backbone_width=32",
    "model.input_size=[128, 128]",
    "model.norm=bn",
    "train.epochs=3",
    "train.batch_size=4",
    "train.lr=0.002",
    "train.eval_every=3",
    "postprocess.score_thresh=0.0",
    "run.threads=1",
]


def _sets(data: Path, *extra: str) -> list[str]:
    out = ["--config", str(EMPTY_CONFIG)]
    for item in [*DDP, f"data.root={data}", *extra]:
        out += ["--set", item]
    return out


def _torchrun(nproc: int, cwd: Path, out: Path, data: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "edgefpn",
        "train",
        "--quiet",
        "--out",
        str(out),
        *_sets(data, *extra),
    ]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _snapshot(*roots: Path) -> dict[str, str]:
    return {str(p): sha256_file(p) for r in roots if r.exists() for p in sorted(r.rglob("*")) if p.is_file()}


def _train_here(data: Path, out: Path):
    """The 1-process run, in this process: the reference."""
    from edgefpn.pipeline import train

    cfg = load_config(EMPTY_CONFIG, [*DDP, f"data.root={data}"])
    return torch.load(train.run(cfg, out, progress=False).path, weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "data"
    return data, _train_here(data, tmp / "ref")


def test_two_ranks_give_the_one_process_run_and_only_rank0_writes(reference, tmp_path):
    data, ref = reference
    cwd, out = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    before = _snapshot(data, cwd)
    proc = _torchrun(2, cwd, out, data)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    got = torch.load(out / "model.pt", weights_only=True)
    # the same loss at every step, and the same val mAP (rank 1's shard gathered to rank 0)
    want_t, got_t = ref["meta"]["train"], got["meta"]["train"]
    assert got_t["world_size"] == 2 and want_t["world_size"] == 1 and len(got_t["step_loss"]) == 6
    np.testing.assert_allclose(got_t["step_loss"], want_t["step_loss"], rtol=1e-4)
    # (an untrained model: mAP ~0 either way; the detection count shows both ranks' shards arrived)
    assert got_t["history"][-1]["val_map"] == want_t["history"][-1]["val_map"]
    assert got_t["history"][-1]["val_detections"] == want_t["history"][-1]["val_detections"] > 6 * 50
    for k, v in ref["state_dict"].items():
        assert got["state_dict"][k].dtype == v.dtype
        torch.testing.assert_close(got["state_dict"][k], v, **WEIGHTS, msg=k)
    # Only rank 0 wrote: the run dir holds what one process writes, the data and the working
    # directory of both ranks are untouched, and the path is said once.
    # rank 0's: the model, and the CLI's digest cache (no lock file is left behind)
    assert sorted(p.name for p in out.iterdir()) == ["cache", "model.pt", "model.pt.manifest.json"]
    assert [p.name for p in (out / "cache").iterdir()] == ["digests.json"]
    assert _snapshot(data, cwd) == before
    assert log.count(str(out / "model.pt")) == 1, log


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with ``RANK=rank`` (a child of the torchrun process)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def test_killed_rank_ends_the_job_and_resume_continues_on_one_process(reference, tmp_path):
    from edgefpn.pipeline import train

    data, ref = reference
    out = tmp_path / "run"
    proc = _torchrun(2, tmp_path, out, data)
    resume = out / train.RESUME
    deadline = time.monotonic() + 240
    while read_manifest(resume) is None:  # epoch 1 is complete: kill rank 1 during epoch 2
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.02)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    log, _ = proc.communicate(timeout=90)
    assert time.monotonic() - killed < 60, log
    assert proc.returncode != 0
    # What the user reads: no traceback of ours, at most one edgefpn error line, and torchrun's
    # summary naming rank 1 and its signal.
    errors = [line for line in log.splitlines() if line.startswith(("error:", "internal error:"))]
    assert len(errors) <= 1, log
    assert "rank      : 1" in log and "SIGKILL" in log, log
    assert "edgefpn/" not in log.partition("Traceback")[2].partition("torch/distributed/run.py")[0], log
    # the last complete resume state, nothing half-written, no model
    assert sorted(p.name for p in out.iterdir()) == ["train.last.pt", "train.last.pt.manifest.json"], sorted(
        out.iterdir()
    )
    assert read_manifest(resume)["sha256"] == sha256_file(resume)
    epoch = torch.load(resume, weights_only=True)["epoch"]
    assert epoch in (1, 2)
    # resume on 1 process (world size 2 -> 1): the uninterrupted run's weights and losses
    got = _train_here(data, out)
    np.testing.assert_allclose(
        got["meta"]["train"]["step_loss"], ref["meta"]["train"]["step_loss"], rtol=1e-4
    )
    for k, v in ref["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][k], v, **WEIGHTS, msg=k)
    assert not resume.exists()


def test_batch_that_does_not_divide_is_one_line(reference, tmp_path):
    data, _ = reference
    proc = _torchrun(3, tmp_path, tmp_path / "run", data)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: rank 0: train.batch_size: 4 is the global batch and must divide by the world size 3 "
        "(each rank takes batch_size / world_size)"
    ], log
    assert not (tmp_path / "run").exists()

"""The pieces torchrun relies on, in one process: the global-batch sampler, per-item randomness,
worker-count independence, the train settings, and what each rank prints."""

from __future__ import annotations

import pytest
import torch

from edgefpn.config import load_config
from edgefpn.data import synth
from edgefpn.data.coco import load_split
from edgefpn.data.torch_dataset import DetectionDataset
from edgefpn.errors import ConfigError
from edgefpn.training.sampler import GlobalBatchSampler
from tests.conftest import TINY
from tests.security.harness import EMPTY_CONFIG


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_each_single_process_batch(world):
    one = GlobalBatchSampler(10, 4, seed=7)
    ranks = [GlobalBatchSampler(10, 4, seed=7, rank=r, world_size=world) for r in range(world)]
    for epoch in (0, 3):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        single = list(one)
        assert len(single) == 2 and all(len(b) == 4 for b in single)  # 10 // 4 steps; the rest dropped
        per_rank = [list(s) for s in ranks]
        for step, batch in enumerate(single):
            assert [i for r in per_rank for i in r[step]] == batch  # rank order = the batch's order
        assert all(e == epoch for b in single for e, _ in b)
    one.set_epoch(0)
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first  # a new order each epoch
    with pytest.raises(ValueError, match="multiple of world_size 3, got 4"):
        GlobalBatchSampler(10, 4, seed=0, world_size=3)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("items") / "synth"
    synth.generate(
        out, num_train=8, num_val=1, num_calib=1, seed=2, min_side=64, max_side=96, show_progress=False
    )
    return load_split(out, "train")


def test_item_randomness_is_per_index_and_epoch_only(split):
    ds = DetectionDataset(split, (96, 96), hflip=True, seed=5)
    flips = [[ds.item_rng(i, e).random() < 0.5 for i in range(8)] for e in range(4)]
    assert any(any(row) for row in flips) and not all(all(row) for row in flips)
    torch.manual_seed(0)
    x0, t0 = ds[(2, 3)]
    torch.manual_seed(123)  # torch's global generator plays no part
    ds.set_epoch(2)
    x1, t1 = ds[3]
    assert torch.equal(x0, x1) and torch.equal(t0["boxes"], t1["boxes"])
    other = DetectionDataset(split, (96, 96), hflip=True, seed=6)
    assert [other.item_rng(i, 0).random() for i in range(3)] != [ds.item_rng(i, 0).random() for i in range(3)]


def test_batches_do_not_depend_on_the_worker_count(split):
    from edgefpn.training.distributed import Dist
    from edgefpn.training.loop import build_loader

    ds = DetectionDataset(split, (96, 96), hflip=True, seed=0)
    batches = {}
    for workers in (0, 2):
        cfg = load_config(EMPTY_CONFIG, [f"train.workers={workers}", "train.batch_size=4"])
        loader, sampler = build_loader(cfg, ds, Dist())
        sampler.set_epoch(1)
        batches[workers] = list(loader)
        assert loader.persistent_workers == (workers > 0)
    for (xa, ta), (xb, tb) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(xa, xb)
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(ta, tb, strict=True))


def test_train_settings_are_validated_and_hashed():
    from edgefpn.training.settings import train_config_hash

    for key, value, says in (
        ("device", "gpu", "must be auto, cpu, cuda or cuda:N"),
        ("amp", "fp8", "must be off, bf16, fp16 or auto"),
        ("workers", "-1", "workers >= 0"),
    ):
        with pytest.raises(ConfigError, match=says):
            load_config(EMPTY_CONFIG, [f"train.{key}={value}"])
    base = train_config_hash(load_config(EMPTY_CONFIG))
    # the worker count and the timeout do not change the weights; device and precision do
    assert train_config_hash(load_config(EMPTY_CONFIG, ["train.workers=4", "train.timeout_s=30"])) == base
    assert train_config_hash(load_config(EMPTY_CONFIG, ["train.amp=bf16"])) != base
    assert train_config_hash(load_config(EMPTY_CONFIG, ["train.device=cpu"])) != base


def test_fp16_off_cuda_and_missing_cuda_are_refused():
    from edgefpn.training.distributed import resolve_device
    from edgefpn.training.loop import amp_dtype

    with pytest.raises(ConfigError, match="train.amp: fp16 needs CUDA"):
        amp_dtype(load_config(EMPTY_CONFIG, ["train.amp=fp16"]), torch.device("cpu"))
    assert amp_dtype(load_config(EMPTY_CONFIG, ["train.amp=bf16"]), torch.device("cpu")) == torch.bfloat16
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: the refusal below is for machines without it")
    with pytest.raises(ConfigError, match="'cuda:1' asked for, but torch sees no CUDA device"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_amp_is_bf16_only_where_onednn_has_bf16_kernels(monkeypatch):
    """``train.amp=auto`` picks bf16 on a CPU with oneDNN bf16 kernels and fp32 on one without (an
    AVX2-only CPU, where bf16 autocast falls back to a scalar convolution)."""
    from edgefpn.training import loop

    cfg = load_config(EMPTY_CONFIG, ["train.amp=auto"])
    for native, want in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert loop.resolve_amp("auto", torch.device("cpu")) == ("bf16" if native else "off")
        assert loop.amp_dtype(cfg, torch.device("cpu")) is want
    assert loop.resolve_amp("off", torch.device("cpu")) == "off"  # an explicit setting is kept as given
    assert loop.resolve_amp("bf16", torch.device("cpu")) == "bf16"


def test_each_rank_prints_only_its_own_errors(monkeypatch, tmp_path):
    """Under torchrun, a config error is said by rank 0 only; a rank's own error is said with its rank."""
    import edgefpn.cli_support
    from tests.security.harness import cli

    missing = tmp_path / "nowhere"
    monkeypatch.setattr(edgefpn.cli_support, "RANK0_GRACE_S", 0.0)  # the torchrun test covers the wait itself
    for rank, bad_config, said in ((0, True, True), (1, True, False), (1, False, True)):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        args = (
            ["--set", "train.amp=fp8"]
            if bad_config
            else ["--set", f"data.root={missing}", "--set", "data.builtin=false"]
        )
        res = cli("data", "--config", str(EMPTY_CONFIG), *args)
        assert res.exit_code == 2
        lines = [ln for ln in res.output.splitlines() if ln]
        assert (len(lines) == 1 and lines[0].startswith(f"error: rank {rank}: ")) if said else lines == [], (
            lines
        )


@pytest.mark.slow
def test_bf16_on_cpu_trains_and_saves_float32(tmp_path):
    from edgefpn.pipeline import train

    cfg = load_config(
        EMPTY_CONFIG,
        [
            *TINY,
            f"data.root={tmp_path / 'data'}",
            "data.synth.num_train=4",
            "train.batch_size=2",
            "model.backbone_width=32",
            "model.input_size=[128, 128]",
            "train.amp=bf16",
            "train.device=cpu",
            "run.threads=1",
        ],
    )
    ckpt = torch.load(train.run(cfg, tmp_path / "run", progress=False).path, weights_only=True)
    assert ckpt["meta"]["train"]["config"]["amp"] == "bf16" and ckpt["meta"]["train"]["device"] == "cpu"
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())
    assert {v.dtype for v in ckpt["state_dict"].values() if v.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(torch.tensor(ckpt["meta"]["train"]["step_loss"])))

"""The training loop: data loading, AMP, the optimiser step, progress, gathered validation mAP, resume state.

Runs the same on one process and under torchrun; ``Dist`` (``edgefpn.training.distributed``) says
which rank this is. Only rank 0 writes (the resume state) and shows progress.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgefpn.artifacts import atomic_output, read_manifest, sha256_file, write_manifest
from edgefpn.config import Config
from edgefpn.errors import ConfigError
from edgefpn.pipeline.common import log, make_prepost
from edgefpn.training.distributed import Dist
from edgefpn.training.sampler import GlobalBatchSampler, hash_seed

__all__ = [
    "STOP_AFTER_EPOCH_ENV",
    "TrainState",
    "build_loader",
    "build_optimizer",
    "load_resume",
    "quick_map",
    "run_epochs",
]

# Debugging and tests: stop (as if interrupted) right after the resume state of this epoch is written.
STOP_AFTER_EPOCH_ENV = "EDGEFPN_TRAIN_STOP_AFTER_EPOCH"

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainState:
    """What a resume restores, and what model.pt's meta records of the run."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    step_losses: list[float] = field(default_factory=list)  # the global (all-rank) loss of every step


def _seed_worker(worker_id: int) -> None:
    # Items draw from their own (seed, epoch, index) generator; this only keeps anything else a
    # library might draw in a worker reproducible. torch seeds each worker from the loader's generator.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_loader(cfg: Config, dataset, dist: Dist) -> tuple[torch.utils.data.DataLoader, GlobalBatchSampler]:
    from edgefpn.data.torch_dataset import collate

    t = cfg.train
    sampler = GlobalBatchSampler(
        len(dataset), t.batch_size, seed=cfg.run.seed, rank=dist.rank, world_size=dist.world_size
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=t.workers,
        persistent_workers=t.workers > 0,
        pin_memory=dist.device.type == "cuda",
        worker_init_fn=_seed_worker if t.workers else None,
        # Not fork: by the time the loader starts, the process holds OpenMP/oneDNN thread pools (and,
        # in one Python process like the test suite, OpenVINO's and ONNX Runtime's); a forked child
        # inherits their locks mid-state, and the test suite segfaulted on exit about one run in two.
        # forkserver children start clean, once per run: the workers are persistent.
        multiprocessing_context="forkserver" if t.workers else None,
        generator=torch.Generator().manual_seed(hash_seed(cfg.run.seed, dist.rank)),
    )
    return loader, sampler


def build_optimizer(cfg: Config, model: nn.Module) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=True), params
    return torch.optim.AdamW(groups, lr=t.lr), params


def lr_at(step: int, total: int, cfg: Config) -> float:
    t = cfg.train
    if step < t.warmup_iters:
        return t.lr * (0.001 + 0.999 * step / max(1, t.warmup_iters))
    progress = (step - t.warmup_iters) / max(1, total - t.warmup_iters)
    return t.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def resolve_amp(setting: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where ``device`` computes bf16 natively, else ``off``; other settings as given.

    Why not bf16 everywhere: on a CPU without oneDNN's bf16 kernels (no AVX-512) autocast falls back to
    a scalar ``slow_conv2d`` (an AVX2-only VM: the default model made < 50 steps in 18 minutes, loaded);
    where oneDNN has them it trains 1.5-2x faster than fp32 at the same mAP (benchmarks/train_speed.md).
    """
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    return (
        "bf16"
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        else "off"
    )


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    amp = resolve_amp(str(cfg.train.amp), device)  # a str once loaded (see TrainConfig)
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.amp: fp16 needs CUDA (its GradScaler is for GPUs); this run is on {device}, "
            "use bf16, auto or off"
        )
    return AMP_DTYPES[amp]


def run_epochs(
    cfg: Config,
    *,
    model: nn.Module,
    module: nn.Module,
    opt: torch.optim.Optimizer,
    params: list[nn.Parameter],
    loader,
    sampler: GlobalBatchSampler,
    state: TrainState,
    data,
    dist: Dist,
    resume: Path,
    chash: str,
    inputs: dict[str, str],
    progress: bool,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    """Train from ``state`` to ``cfg.train.epochs``; rank 0 writes the resume state after each epoch but
    the last.

    ``model`` is what runs the step (DDP-wrapped under torchrun); ``module`` the plain model.
    """
    from tqdm import tqdm

    t = cfg.train
    device, dtype = dist.device, amp_dtype(cfg, dist.device)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    total_steps = t.epochs * len(sampler)
    stop_after = int(os.environ.get(STOP_AFTER_EPOCH_ENV, "0") or 0)
    # One bar for the whole job (every epoch; images/s of all ranks together), on rank 0 only.
    bar = tqdm(
        total=total_steps,
        initial=state.step,
        desc="train",
        disable=not (progress and dist.is_main),
        dynamic_ncols=True,
    )
    t0, steps_here = time.perf_counter(), 0
    try:
        for epoch in range(state.epoch, t.epochs):
            model.train()
            sampler.set_epoch(epoch)
            t_epoch, seen, running = time.perf_counter(), 0, None
            for images, targets in loader:
                lr = lr_at(state.step, total_steps, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                targets = [{k: v.to(device, non_blocking=True) for k, v in tg.items()} for tg in targets]
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    losses = model(images, targets)  # IdentityTransform takes the [N, 3, H, W] batch as is
                loss = sum(losses.values())
                # the global loss: each rank's loss is scaled so that the mean over ranks is the
                # single-process loss of the whole global batch (distributed.globalise_fcos_loss)
                global_loss = float(dist.mean(loss.detach().float()).item())
                if not math.isfinite(global_loss):
                    raise ConfigError(
                        f"train: diverged at step {state.step} (loss {global_loss}); lower train.lr"
                    )
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if t.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
                scaler.step(opt)
                scaler.update()
                state.step += 1
                steps_here += 1
                seen += t.batch_size
                state.step_losses.append(global_loss)
                running = global_loss if running is None else 0.9 * running + 0.1 * global_loss
                rate = steps_here * t.batch_size / (time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(
                    epoch=f"{epoch + 1}/{t.epochs}",
                    loss=f"{running:.3f}",
                    lr=f"{lr:.4f}",
                    img_s=f"{rate:.1f}",
                    refresh=False,
                )
                if dist.is_main and not progress and state.step % 50 == 0:  # no bar: still signs of life
                    log(
                        f"[train] epoch {epoch + 1} step {state.step}/{total_steps} loss={running:.3f} "
                        f"lr={lr:.5f} img/s={rate:.1f}"
                    )
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "loss": round(float(running or 0.0), 4),
                "images_per_s": round(seen / (time.perf_counter() - t_epoch), 2),
            }
            last = epoch + 1 == t.epochs
            if t.eval_every and ((epoch + 1) % t.eval_every == 0 or last):
                value = quick_map(cfg, module, data, t.eval_images if not last else None, dist)
                if value is not None:
                    record["val_map"], record["val_detections"] = round(value[0], 2), value[1]
            state.history.append(record)
            state.epoch = epoch + 1
            if dist.is_main:
                bar.clear()
                log(
                    f"[train] epoch {epoch + 1}/{t.epochs} "
                    + " ".join(f"{k}={v}" for k, v in record.items() if k != "epoch")
                )
                if not last:
                    _save_resume(resume, module, opt, scaler, state, chash, inputs)
            if stop_after and state.epoch == stop_after and not last:
                dist.barrier()  # the resume state is complete before any rank stops
                if dist.is_main:
                    log(
                        f"[train] stopping after epoch {state.epoch} ({STOP_AFTER_EPOCH_ENV}); resume state: "
                        f"{resume}"
                    )
                raise KeyboardInterrupt
    finally:
        bar.close()
    return state


def _save_resume(
    path: Path, module: nn.Module, opt, scaler, state: TrainState, chash: str, inputs: dict[str, str]
) -> None:
    from edgefpn.models.checkpoint import save_state

    payload = {
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": torch.get_rng_state(),
        "epoch": state.epoch,
        "step": state.step,
        "history": state.history,
        "step_losses": state.step_losses,
    }
    with atomic_output(path) as tmp:
        save_state(tmp, payload)
    write_manifest(path, stage="train-resume", config_hash=chash, inputs=inputs)


def load_resume(
    path: Path, chash: str, inputs: dict[str, str], *, force: bool, dist: Dist
) -> dict[str, Any] | None:
    """Rank 0 reads a resume state that matches this config and these inputs, and every rank gets it.

    The state is world-size free (plain model keys, the optimiser's state, the epoch and step), so a
    job may resume with a different number of ranks. Other ranks never read the file: on several
    machines only rank 0's has it.
    """
    state = None
    if dist.is_main and not force and path.is_file():
        meta = read_manifest(path)
        if (
            meta
            and meta.get("config_hash") == chash
            and meta.get("inputs") == inputs
            and meta.get("sha256") == sha256_file(path)
        ):
            state = torch.load(path, map_location="cpu", weights_only=True)
    return dist.broadcast(state)


def quick_map(
    cfg: Config, module: nn.Module, data, max_images: int | None, dist: Dist
) -> tuple[float, int] | None:
    """(val mAP, detections) of the in-memory model through the same wrapper, pipeline and decode as `check`.

    Each rank evaluates every ``world_size``-th image; rank 0 gathers the detections and computes
    the mAP over all of them (the single-process figure); other ranks return None.
    """
    from edgefpn.data.preprocess import load_image
    from edgefpn.metrics.coco import coco_map, detections_to_coco
    from edgefpn.models.registry import export_wrapper

    was_training = module.training
    module.eval()
    wrapper = export_wrapper(cfg.model.arch, module)
    names = list(wrapper.output_names())
    pipe = make_prepost(cfg)
    split = data.split(cfg.data.val_split)
    records = split.images[:max_images] if max_images else split.images
    results: list[dict] = []
    with torch.inference_mode():
        for rec in records[dist.rank :: dist.world_size]:
            batch, lb = pipe.prepare(load_image(rec.path))
            outs = wrapper(torch.from_numpy(batch).to(dist.device))
            det = pipe.decode({n: o.float().cpu().numpy() for n, o in zip(names, outs, strict=True)}, [lb])[0]
            results.extend(detections_to_coco(det, rec.id, split.category_ids))
    module.train(was_training)
    gathered = dist.gather(results)
    if gathered is None:
        return None
    merged = [r for part in gathered for r in part]
    value = float(
        coco_map(data.ann_file(cfg.data.val_split), merged, image_ids=[r.id for r in records])["map"]
    )
    return value, len(merged)

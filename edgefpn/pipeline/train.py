"""Stage `train`: train the detector (one process or under torchrun) or load `model.weights`; write `model.pt`.

The loop, sampler and distributed plumbing live in :mod:`edgefpn.training`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgefpn.artifacts import Artifact, atomic_output, sha256_file, up_to_date, write_manifest
from edgefpn.config import Config, config_hash, to_dict
from edgefpn.errors import CheckpointError, ConfigError, DataError
from edgefpn.pipeline import common
from edgefpn.pipeline import data as data_stage
from edgefpn.pipeline.common import log, seed_everything

ARTIFACT = "model.pt"
RESUME = "train.last.pt"


def _meta(cfg: Config, num_classes: int, class_names: tuple[str, ...] | None,
          category_ids: tuple[int, ...] | None) -> dict[str, Any]:
    from edgefpn.models.registry import arch_spec

    m = cfg.model
    return {
        "arch": m.arch,
        "build": arch_spec(m.arch).build_kwargs(m),  # the builder's arguments: loading rebuilds from these
        "backbone_name": m.backbone,
        "backbone_width": m.backbone_width,
        "neck": m.neck,
        "norm": m.norm,
        "fpn_channels": m.fpn_channels,
        "head_convs": m.head_convs,
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names else None,
        "category_ids": list(category_ids) if category_ids else None,
        "input_size": list(m.input_size),
        "mean": list(m.mean),
        "std": list(m.std),
    }


def _build(cfg: Config, num_classes: int):
    from edgefpn.models.registry import arch_spec

    spec = arch_spec(cfg.model.arch)
    try:
        return spec.builder(num_classes=num_classes, **spec.build_kwargs(cfg.model))
    except ValueError as exc:  # a combination the builder refuses (e.g. mobilenet_v3_large + variant v2)
        raise ConfigError(f"{cfg.source}: model: {exc}") from None


def run(cfg: Config, run_dir: Path, *, force: bool = False, progress: bool = True) -> Artifact:
    """Train (or load ``model.weights``) into ``run_dir/model.pt``.

    Under torchrun every rank calls this; rank 0 decides what to do and is the only one that writes.
    Other ranks return the same artifact path, read from nowhere but their dataset.
    """
    out = run_dir / ARTIFACT
    if cfg.model.weights:
        weights = Path(cfg.model.weights)
        if not weights.is_file():
            raise CheckpointError(f"{weights}: checkpoint not found (model.weights)")
        inputs = {"weights": sha256_file(weights)}
        chash = config_hash(cfg.model, cfg.data.root)
        if not force and (art := up_to_date(out, config_hash=chash, inputs=inputs)):
            log(f"[train] up to date: {out}")
            return art
        if _rank() != 0:  # nothing to train: rank 0 converts the checkpoint alone
            return Artifact(path=out, manifest={})
        return _load_weights(cfg, weights, out, chash, inputs)

    from edgefpn.training import distributed

    dist = distributed.setup(cfg)
    try:
        return _run_training(cfg, run_dir, out, dist, force=force, progress=progress)
    except RuntimeError as exc:
        if dist.enabled and distributed.is_peer_failure(exc):
            raise distributed.PeerLost(f"rank {dist.rank}: a collective failed: {str(exc).splitlines()[0]}") from exc
        raise
    finally:
        distributed.teardown(dist)


def _rank() -> int:
    from edgefpn.training.distributed import world_from_env

    return world_from_env()[0]


def train_config_hash(cfg: Config) -> str:
    """What shapes the trained weights: model, train settings, seed, split.

    ``train.workers`` and ``train.timeout_s`` are left out (items draw their randomness per index, so the
    worker count does not change the result; tested), and so is the world size (the same config is the
    same optimisation on any number of ranks; tested). ``train.device`` and ``train.amp`` are in: a
    model trained on another device or precision differs beyond float rounding.
    """
    train = {k: v for k, v in to_dict(cfg.train).items() if k not in ("workers", "timeout_s")}
    return config_hash(cfg.model, train, cfg.run.seed, cfg.data.train_split)


def _run_training(cfg: Config, run_dir: Path, out: Path, dist, *, force: bool, progress: bool) -> Artifact:
    if dist.is_main:
        data = data_stage.run(cfg, progress=progress)
    dist.barrier()  # rank 0 made or checked the dataset; the others only read it
    if not dist.is_main:
        common.QUIET = True  # one log, rank 0's
        if cfg.data.builtin and up_to_date(Path(cfg.data.root), config_hash=config_hash(cfg.data.synth),
                                           inputs={}) is None:
            raise DataError(f"{cfg.data.root}: the built-in dataset is missing on rank {dist.rank}'s machine; "
                            "run `edgefpn data` there first (only rank 0 writes)")
        data = data_stage.run(cfg, progress=False)
    inputs = {
        "train_annotations": data.annotation_hashes[cfg.data.train_split],
        "val_annotations": data.annotation_hashes[cfg.data.val_split],
    }
    chash = train_config_hash(cfg)
    fresh = up_to_date(out, config_hash=chash, inputs=inputs) if dist.is_main and not force else None
    if dist.broadcast(fresh is not None):
        log(f"[train] up to date: {out}")
        return fresh or Artifact(path=out, manifest={})
    return _train(cfg, data, run_dir, out, chash, inputs, force=force, progress=progress, dist=dist)


def _load_weights(cfg: Config, weights: Path, out: Path, chash: str, inputs: dict[str, str]) -> Artifact:
    """Load a user checkpoint (edgefpn or torchvision layout) and save it as this run's model."""
    from edgefpn.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
    from edgefpn.models.registry import arch_spec

    ckpt = load_checkpoint(weights)
    meta_in = ckpt.get("meta") if isinstance(ckpt, dict) and ckpt.get("format") == "edgefpn" else None
    num_classes = cfg.model.num_classes or (meta_in or {}).get("num_classes")
    if not num_classes:
        raise ConfigError(f"{weights}: set model.num_classes to load this checkpoint (it records no class count)")
    class_names = cfg.model.class_names or tuple((meta_in or {}).get("class_names") or ()) or None
    category_ids = tuple((meta_in or {}).get("category_ids") or ()) or None
    if category_ids is None and (offset := arch_spec(cfg.model.arch).label_offset):
        category_ids = tuple(range(offset, int(num_classes) + offset))  # torchvision's labels
    model = _build(cfg, int(num_classes))
    load_weights(model, weights)
    meta = _meta(cfg, int(num_classes), class_names, category_ids)
    meta["source"] = {"weights": str(weights), "sha256": inputs["weights"]}
    with atomic_output(out) as tmp:
        save_checkpoint(tmp, model, meta=meta)
    log(f"[train] loaded {weights} -> {out}")
    return write_manifest(out, stage="train", config_hash=chash, inputs=inputs, extra={"meta": meta})


def _train(cfg: Config, data, run_dir: Path, out: Path, chash: str, inputs: dict[str, str], *,
           force: bool, progress: bool, dist) -> Artifact:
    import torch

    from edgefpn.data.torch_dataset import DetectionDataset
    from edgefpn.models.checkpoint import save_checkpoint
    from edgefpn.training import loop
    from edgefpn.training.distributed import convert_sync_batchnorm, globalise_fcos_loss

    t = cfg.train
    torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)  # every rank builds the same initial weights
    train_split = data.split(cfg.data.train_split)
    if not train_split.images:
        raise ConfigError(f"{data.ann_file(cfg.data.train_split)}: no training images")
    num_classes = cfg.model.num_classes or len(train_split.class_names)
    meta = _meta(cfg, num_classes, cfg.model.class_names or train_split.class_names, train_split.category_ids)
    module = _build(cfg, num_classes)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    module = module.to(dist.device, memory_format=memory_format)
    dataset = DetectionDataset(train_split, size=cfg.model.input_size, mean=cfg.model.mean, std=cfg.model.std,
                               hflip=t.hflip, seed=cfg.run.seed)
    if len(dataset) < t.batch_size:
        raise ConfigError(f"train.batch_size: {t.batch_size} is more than the {len(dataset)} training images")
    loader, sampler = loop.build_loader(cfg, dataset, dist)
    opt, params = loop.build_optimizer(cfg, module)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.train.amp == "fp16")
    loop.amp_dtype(cfg, dist.device)  # refuse fp16 off CUDA before any work

    resume = run_dir / RESUME
    state = loop.TrainState()
    saved = loop.load_resume(resume, chash, inputs, force=force, dist=dist)
    if saved is not None:
        module.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"])
        state = loop.TrainState(epoch=int(saved["epoch"]), step=int(saved["step"]),
                                history=list(saved["history"]), step_losses=list(saved["step_losses"]))
        log(f"[train] resuming from {resume} at epoch {state.epoch}")
    model = module
    if dist.enabled:
        torch.manual_seed(cfg.run.seed + dist.rank)  # what a model draws while training differs per rank
        if t.sync_bn is not False:
            module = convert_sync_batchnorm(module, dist.device)
        if cfg.model.arch == "fcos":
            globalise_fcos_loss(module, dist.world_size)
        model = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    elif t.sync_bn:
        log("[train] train.sync_bn: one process, plain BatchNorm is the same thing")

    backend = "nccl" if dist.device.type == "cuda" else "gloo"
    log(f"[train] {cfg.model.arch}/{cfg.model.backbone} fpn{cfg.model.fpn_channels}, {num_classes} classes, "
        f"{len(dataset)} images, {t.epochs} epochs x {len(sampler)} iters, global batch {t.batch_size}"
        + (f" on {dist.world_size} ranks ({backend})" if dist.enabled else "") + f", {dist.device}, amp {t.amp}")
    t_start = time.perf_counter()
    state = loop.run_epochs(cfg, model=model, module=module, opt=opt, params=params, loader=loader,
                            sampler=sampler, state=state, data=data, dist=dist, resume=resume, chash=chash,
                            inputs=inputs, progress=progress, scaler=scaler)
    art = None
    if dist.is_main:
        module = module.to("cpu", memory_format=torch.contiguous_format).float().eval()  # one model.pt format
        meta["train"] = {"history": state.history, "seconds": round(time.perf_counter() - t_start, 1),
                         "config": to_dict(cfg.train), "world_size": dist.world_size, "device": str(dist.device),
                         "step_loss": [float(f"{v:.7g}") for v in state.step_losses]}
        with atomic_output(out) as tmp:
            save_checkpoint(tmp, module, meta=meta)
        art = write_manifest(out, stage="train", config_hash=chash, inputs=inputs, extra={"meta": meta})
        for stale in (resume, resume.with_name(resume.name + ".manifest.json")):
            stale.unlink(missing_ok=True)
    dist.barrier()  # the job ends when model.pt is in place
    return art or Artifact(path=out, manifest={})

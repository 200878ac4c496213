"""Stage `train`: train the detector on CPU (or load `model.weights`) and write `model.pt`."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from edgefpn.artifacts import Artifact, atomic_output, read_manifest, sha256_file, up_to_date, write_manifest
from edgefpn.config import Config, config_hash, to_dict
from edgefpn.errors import CheckpointError, ConfigError
from edgefpn.pipeline import data as data_stage
from edgefpn.pipeline.common import log, make_pipeline, seed_everything

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
        "norm": "frozen_bn" if m.backbone_weights else m.norm,  # as registry._backbone_kwargs builds it
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
        return _load_weights(cfg, weights, out, chash, inputs)

    data = data_stage.run(cfg, progress=progress)
    inputs = {
        "train_annotations": data.annotation_hashes[cfg.data.train_split],
        "val_annotations": data.annotation_hashes[cfg.data.val_split],
    }
    if cfg.model.backbone_weights:
        backbone_weights = Path(cfg.model.backbone_weights)
        if not backbone_weights.is_file():
            raise CheckpointError(f"{backbone_weights}: backbone weights not found (model.backbone_weights)")
        inputs["backbone_weights"] = sha256_file(backbone_weights)
    chash = config_hash(cfg.model, cfg.train, cfg.run.seed, cfg.data.train_split)
    if not force and (art := up_to_date(out, config_hash=chash, inputs=inputs)):
        log(f"[train] up to date: {out}")
        return art
    return _train(cfg, data, run_dir, out, chash, inputs, force=force, progress=progress)


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


def _lr_at(step: int, total: int, cfg: Config) -> float:
    t = cfg.train
    if step < t.warmup_iters:
        return t.lr * (0.001 + 0.999 * step / max(1, t.warmup_iters))
    progress = (step - t.warmup_iters) / max(1, total - t.warmup_iters)
    return t.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _train(cfg: Config, data, run_dir: Path, out: Path, chash: str, inputs: dict[str, str], *,
           force: bool, progress: bool) -> Artifact:
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from edgefpn.data.torch_dataset import DetectionDataset, collate
    from edgefpn.models.checkpoint import save_checkpoint

    t = cfg.train
    torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    train_split = data.split(cfg.data.train_split)
    if not train_split.images:
        raise ConfigError(f"{data.ann_file(cfg.data.train_split)}: no training images")
    num_classes = cfg.model.num_classes or len(train_split.class_names)
    meta = _meta(cfg, num_classes, cfg.model.class_names or train_split.class_names, train_split.category_ids)
    model = _build(cfg, num_classes)
    if cfg.model.backbone_weights:
        _load_backbone(cfg, model)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)

    dataset = DetectionDataset(
        train_split, size=cfg.model.input_size, mean=cfg.model.mean, std=cfg.model.std, hflip=t.hflip,
        augment=t.augment, seed=cfg.run.seed,
    )
    gen = torch.Generator().manual_seed(cfg.run.seed)
    loader = DataLoader(dataset, batch_size=t.batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate, generator=gen, num_workers=0)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=t.lr)

    total_steps = t.epochs * len(loader)
    start_epoch, step = 0, 0
    resume = run_dir / RESUME
    resume_meta = read_manifest(resume)
    if not force and resume.is_file() and resume_meta and resume_meta.get("config_hash") == chash \
            and resume_meta.get("inputs") == inputs and resume_meta.get("sha256") == sha256_file(resume):
        state = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        gen.set_state(state["loader_rng"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        log(f"[train] resuming from {resume} at epoch {start_epoch}")

    log(f"[train] {cfg.model.arch}/{cfg.model.backbone} fpn{cfg.model.fpn_channels}, {num_classes} classes, "
        f"{len(dataset)} images, {t.epochs} epochs x {len(loader)} iters, batch {t.batch_size}")
    history: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    autocast = _autocast(t.amp)
    for epoch in range(start_epoch, t.epochs):
        model.train()
        dataset.set_epoch(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not progress, leave=False,
                   dynamic_ncols=True)
        seen, t0, running = 0, time.perf_counter(), None
        for images, targets in bar:
            lr = _lr_at(step, total_steps, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            images = images.to(memory_format=memory_format)
            with autocast():
                losses = model(images, targets)  # IdentityTransform takes the [N, 3, H, W] batch as is
            loss = sum(v.float() for v in losses.values())
            if not torch.isfinite(loss):
                raise ConfigError(f"training diverged at step {step} (loss {loss.item()}); lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            opt.step()
            step += 1
            seen += images.shape[0]
            running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr:.4f}", img_s=f"{rate:.1f}")
            if not progress and step % 50 == 0:  # no bar (not a terminal): still show signs of life
                log(f"[train] epoch {epoch + 1} step {step}/{total_steps} loss={running:.3f} lr={lr:.5f} "
                    f"img/s={rate:.1f}")
        bar.close()
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": round(float(running or 0.0), 4),
                                  "images_per_s": round(seen / (time.perf_counter() - t0), 2)}
        last = epoch + 1 == t.epochs
        if t.eval_every and ((epoch + 1) % t.eval_every == 0 or last):
            record["val_map"] = round(_quick_map(cfg, model, data, t.eval_images if not last else None), 2)
        history.append(record)
        log(f"[train] epoch {epoch + 1}/{t.epochs} " + " ".join(f"{k}={v}" for k, v in record.items() if k != "epoch"))
        if not last:
            _save_resume(resume, model, opt, gen, epoch + 1, step, chash, inputs)
    model = model.to(memory_format=torch.contiguous_format).eval()
    meta["train"] = {"history": history, "seconds": round(time.perf_counter() - t_start, 1),
                     "config": to_dict(cfg.train)}
    with atomic_output(out) as tmp:
        save_checkpoint(tmp, model, meta=meta)
    art = write_manifest(out, stage="train", config_hash=chash, inputs=inputs, extra={"meta": meta})
    for stale in (resume, resume.with_name(resume.name + ".manifest.json")):
        stale.unlink(missing_ok=True)
    return art


def _load_backbone(cfg: Config, model) -> None:
    """ImageNet weights into the backbone, then torchvision's frozen stages."""
    from edgefpn.models.pretrained import DEFAULT_TRAINABLE_LAYERS, freeze_backbone, load_backbone_weights

    m = cfg.model
    load_backbone_weights(model, m.backbone_weights, backbone=m.backbone)
    layers = DEFAULT_TRAINABLE_LAYERS if m.trainable_layers is None else m.trainable_layers
    freeze_backbone(model, backbone=m.backbone, trainable_layers=layers)
    log(f"[train] backbone weights from {m.backbone_weights}; {layers} trainable backbone stages, frozen BN")


def _autocast(amp: str):
    """A factory of the forward pass's autocast context for ``train.amp`` (CPU here: bf16 only)."""
    import contextlib

    import torch

    if amp == "off":
        return contextlib.nullcontext
    if amp == "fp16":  # needs CUDA and a GradScaler; this trainer runs on the CPU
        raise ConfigError("train.amp=fp16 needs a CUDA device; on the CPU use bf16 or off")
    return lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def _save_resume(path: Path, model, opt, gen, epoch: int, step: int, chash: str, inputs: dict[str, str]) -> None:
    import torch

    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
             "loader_rng": gen.get_state(), "epoch": epoch, "step": step}
    from edgefpn.models.checkpoint import save_state

    with atomic_output(path) as tmp:
        save_state(tmp, state)
    write_manifest(path, stage="train-resume", config_hash=chash, inputs=inputs)


def _quick_map(cfg: Config, model, data, max_images: int | None) -> float:
    """Val mAP of the in-memory model through the same wrapper, pipeline and decode as `check`."""
    import torch

    from edgefpn.data.preprocess import load_image
    from edgefpn.metrics.coco import coco_map, detections_to_coco
    from edgefpn.models.registry import export_wrapper

    was_training = model.training
    model.eval()
    wrapper = export_wrapper(cfg.model.arch, model)
    names = list(wrapper.output_names())
    pipe = make_pipeline(cfg)
    split = data.split(cfg.data.val_split)
    records = split.images[:max_images] if max_images else split.images
    results: list[dict] = []
    with torch.inference_mode():
        for rec in records:
            batch, lb = pipe.prepare(load_image(rec.path))
            outs = wrapper(torch.from_numpy(batch))
            det = pipe.decode({n: o.numpy() for n, o in zip(names, outs, strict=True)}, [lb])[0]
            results.extend(detections_to_coco(det, rec.id, split.category_ids))
    model.train(was_training)
    return float(coco_map(data.ann_file(cfg.data.val_split), results, image_ids=[r.id for r in records])["map"])

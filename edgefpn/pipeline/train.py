"""Stage `train`: train the detector (one process or under torchrun) or load `model.weights`; write
`model.pt`.

The loop, sampler and distributed plumbing live in :mod:`edgefpn.training`; building the detector, its
recorded meta and how a new ``model.pt`` replaces the old in :mod:`edgefpn.training.model_file`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from edgefpn.artifacts import (
    Artifact,
    atomic_output,
    manifest_path,
    sha256_file,
)
from edgefpn.config import Config, to_dict
from edgefpn.errors import CheckpointError, ConfigError, DataError
from edgefpn.pipeline import common
from edgefpn.pipeline import data as data_stage
from edgefpn.pipeline.common import log, seed_everything, training_refused_by
from edgefpn.stages import DATA, TRAIN, TRAIN_FROM_WEIGHTS
from edgefpn.training import model_file
from edgefpn.training.model_file import build as _build  # noqa: F401 -- tests and benchmarks import it here
from edgefpn.training.settings import (
    model_config_hash,
    model_settings,
    refusal,
    stale_reason,
)

ARTIFACT = "model.pt"
RESUME = "train.last.pt"


def run(cfg: Config, run_dir: Path, *, force: bool = False, progress: bool = True) -> Artifact:
    """Bring ``model.pt`` up to date: load ``model.weights``, or train (one process or under torchrun).

    Training happens only where :func:`edgefpn.pipeline.common.training_refused_by` allows it (the
    CLI allows it for ``train`` and ``run``); elsewhere a missing or out-of-date model is a
    ``ConfigError`` naming the settings that differ. A model that is replaced is kept beside it as
    ``model.prev-<UTC time>.pt`` with its manifest. Under torchrun every rank calls this; rank 0
    decides what to do and is the only one that writes.
    """
    out = run_dir / ARTIFACT
    settings = model_settings(cfg)
    if cfg.model.weights:  # loading a checkpoint is not training: every command may do it
        weights = Path(cfg.model.weights)
        if not weights.is_file():
            raise CheckpointError(f"{weights}: checkpoint not found (model.weights)")
        inputs = {"weights": sha256_file(weights)}
        chash = model_config_hash(cfg)
        if art := TRAIN_FROM_WEIGHTS.fresh(out, config_hash=chash, inputs=inputs, force=force):
            log(f"[train] up to date: {out}")
            return art
        if _rank() != 0:  # nothing to train: rank 0 converts the checkpoint alone
            return Artifact(path=out, manifest={})
        return _load_weights(cfg, weights, out, chash, inputs, settings)

    chash = model_config_hash(cfg)
    refused_by = training_refused_by()
    if refused_by is not None and (why := stale_reason(out, chash, settings)) is not None:
        raise refusal(out, why, refused_by)  # before the data stage: other settings may regenerate data

    from edgefpn.training import distributed

    dist = distributed.setup(cfg)
    try:
        return _run_training(
            cfg, run_dir, out, dist, chash, settings, refused_by, force=force, progress=progress
        )
    except RuntimeError as exc:
        if dist.enabled and distributed.is_peer_failure(exc):
            raise distributed.PeerLost(
                f"rank {dist.rank}: a collective failed: {str(exc).splitlines()[0]}"
            ) from exc
        raise
    finally:
        distributed.teardown(dist)


def _rank() -> int:
    from edgefpn.training.distributed import world_from_env

    return world_from_env()[0]


def _run_training(
    cfg: Config,
    run_dir: Path,
    out: Path,
    dist,
    chash: str,
    settings: dict[str, Any],
    refused_by: str | None,
    *,
    force: bool,
    progress: bool,
) -> Artifact:
    if dist.is_main:
        data = data_stage.run(cfg, progress=progress)
    dist.barrier()  # rank 0 made or checked the dataset; the others only read it
    if not dist.is_main:
        common.current_context().quiet = True  # one log, rank 0's
        if (
            cfg.data.builtin
            and DATA.fresh(Path(cfg.data.root), config_hash=DATA.config_hash(cfg), inputs={}) is None
        ):
            raise DataError(
                f"{cfg.data.root}: the built-in dataset is missing on rank {dist.rank}'s machine; "
                "run `edgefpn data` there first (only rank 0 writes)"
            )
        data = data_stage.run(cfg, progress=False)
    # the pixels are read too: an image replaced under the same name retrains
    inputs = {
        "train_annotations": data.annotation_hashes[cfg.data.train_split],
        "train_images": data.images_hash(cfg.data.train_split),
    }
    if cfg.model.backbone_weights:
        backbone_weights = Path(cfg.model.backbone_weights)
        if not backbone_weights.is_file():
            raise CheckpointError(f"{backbone_weights}: backbone weights not found (model.backbone_weights)")
        inputs["backbone_weights"] = sha256_file(backbone_weights)
    if cfg.train.eval_every:  # val is read only for the periodic mAP recorded with the model
        inputs["val_annotations"] = data.annotation_hashes[cfg.data.val_split]
        inputs["val_images"] = data.images_hash(cfg.data.val_split)
    fresh = TRAIN.fresh(out, config_hash=chash, inputs=inputs, force=force) if dist.is_main else None
    if dist.broadcast(fresh is not None):
        log(f"[train] up to date: {out}")
        return fresh or Artifact(path=out, manifest={})
    why = "--force" if force else stale_reason(out, chash, settings, inputs) or "out of date"
    if refused_by is not None:
        raise refusal(out, why, refused_by)
    if out.exists():
        log(f"[train] {out}: {why}; training again")
    return _train(cfg, data, run_dir, out, chash, inputs, settings, force=force, progress=progress, dist=dist)


def refused_settings(cfg: Config, run_dir: Path, command: str) -> None:
    """For commands that use a run's engines but never its model (``benchmark``): refuse when the run's
    ``model.pt`` was made with other settings than ``cfg``. A run without one (engines copied to a
    device) passes."""
    out = run_dir / ARTIFACT
    if out.exists() and (why := stale_reason(out, model_config_hash(cfg), model_settings(cfg))) is not None:
        raise refusal(out, why, command)


def _load_weights(
    cfg: Config, weights: Path, out: Path, chash: str, inputs: dict[str, str], settings: dict[str, Any]
) -> Artifact:
    """Load a user checkpoint (edgefpn or torchvision layout) and save it as this run's model."""
    from edgefpn.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
    from edgefpn.models.registry import arch_spec

    ckpt = load_checkpoint(weights)
    meta_in = ckpt.get("meta") if isinstance(ckpt, dict) and ckpt.get("format") == "edgefpn" else None
    num_classes = cfg.model.num_classes or (meta_in or {}).get("num_classes")
    if not num_classes:
        raise ConfigError(
            f"{weights}: set model.num_classes to load this checkpoint (it records no class count)"
        )
    class_names = cfg.model.class_names or tuple((meta_in or {}).get("class_names") or ()) or None
    category_ids = tuple((meta_in or {}).get("category_ids") or ()) or None
    if category_ids is None and (offset := arch_spec(cfg.model.arch).label_offset):
        category_ids = tuple(range(offset, int(num_classes) + offset))  # torchvision's labels
    model = model_file.build(cfg, int(num_classes))
    load_weights(model, weights)
    meta = model_file.meta(cfg, int(num_classes), class_names, category_ids)
    meta["source"] = {"weights": str(weights), "sha256": inputs["weights"]}
    with atomic_output(out) as tmp:
        save_checkpoint(tmp, model, meta=meta)
        model_file.keep_previous(out, tmp)
    log(f"[train] loaded {weights} -> {out}")
    return TRAIN_FROM_WEIGHTS.record(
        out, config_hash=chash, inputs=inputs, extra={"meta": meta, "settings": settings}
    )


def _train(
    cfg: Config,
    data,
    run_dir: Path,
    out: Path,
    chash: str,
    inputs: dict[str, str],
    settings: dict[str, Any],
    *,
    force: bool,
    progress: bool,
    dist,
) -> Artifact:
    import torch

    from edgefpn.data.torch_dataset import DetectionDataset
    from edgefpn.models.checkpoint import save_checkpoint
    from edgefpn.training import loop
    from edgefpn.training.distributed import wrap_for_ranks

    t = cfg.train
    torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)  # every rank builds the same initial weights
    train_split = data.split(cfg.data.train_split)
    _refuse_zero_steps(cfg, train_split, out)
    num_classes = cfg.model.num_classes or len(train_split.class_names)
    meta = model_file.meta(
        cfg, num_classes, cfg.model.class_names or train_split.class_names, train_split.category_ids
    )
    module = model_file.build(cfg, num_classes)
    if cfg.model.backbone_weights:
        model_file.load_backbone(cfg, module)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    module = module.to(dist.device, memory_format=memory_format)
    dataset = DetectionDataset(
        train_split,
        size=cfg.model.input_size,
        mean=cfg.model.mean,
        std=cfg.model.std,
        hflip=t.hflip,
        augment=t.augment,
        seed=cfg.run.seed,
    )
    loader, sampler = loop.build_loader(cfg, dataset, dist)
    opt, params = loop.build_optimizer(cfg, module)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.train.amp == "fp16")
    loop.amp_dtype(cfg, dist.device)  # refuse fp16 off CUDA before any work

    resume = run_dir / RESUME
    state = _resume_or_set_aside(
        resume, chash, inputs, module=module, opt=opt, scaler=scaler, force=force, dist=dist
    )
    module, model = wrap_for_ranks(cfg, module, dist)

    backend = "nccl" if dist.device.type == "cuda" else "gloo"
    log(
        f"[train] {cfg.model.arch}/{cfg.model.backbone} fpn{cfg.model.fpn_channels}, {num_classes} classes, "
        f"{len(dataset)} images, {t.epochs} epochs x {len(sampler)} iters, global batch {t.batch_size}"
        + (f" on {dist.world_size} ranks ({backend})" if dist.enabled else "")
        + f", {dist.device}, amp {t.amp}"
        + (f" ({loop.resolve_amp(t.amp, dist.device)})" if t.amp == "auto" else "")
    )
    t_start = time.perf_counter()
    state = loop.run_epochs(
        cfg,
        model=model,
        module=module,
        opt=opt,
        params=params,
        loader=loader,
        sampler=sampler,
        state=state,
        data=data,
        dist=dist,
        resume=resume,
        chash=chash,
        inputs=inputs,
        progress=progress,
        scaler=scaler,
    )
    art = None
    if dist.is_main:
        # Module.to takes memory_format (documented), which torch's typed overloads of it leave out
        module = module.to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        module = module.float().eval()  # one model.pt format
        meta["train"] = {
            "history": state.history,
            "seconds": round(time.perf_counter() - t_start, 1),
            "config": to_dict(cfg.train),
            "world_size": dist.world_size,
            "device": str(dist.device),
            "amp": loop.resolve_amp(str(cfg.train.amp), dist.device),  # a str once loaded (see TrainConfig)
            "step_loss": [float(f"{v:.7g}") for v in state.step_losses],
        }
        with atomic_output(out) as tmp:
            save_checkpoint(tmp, module, meta=meta)
            model_file.keep_previous(out, tmp)
        art = TRAIN.record(out, config_hash=chash, inputs=inputs, extra={"meta": meta, "settings": settings})
        for stale in (resume, resume.with_name(resume.name + ".manifest.json")):
            stale.unlink(missing_ok=True)
    dist.barrier()  # the job ends when model.pt is in place
    return art or Artifact(path=out, manifest={})


def _resume_or_set_aside(
    resume: Path, chash: str, inputs: dict[str, str], *, module, opt, scaler, force: bool, dist
):
    """The training state to start from: ``resume``'s when it was saved under these settings (model,
    optimiser, scaler and RNG restored in place), else a fresh one, another run's partial state kept aside."""
    import torch

    from edgefpn.training import loop

    state = loop.TrainState()
    saved = loop.load_resume(resume, chash, inputs, force=force, dist=dist)
    if saved is not None:
        module.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"])
        state = loop.TrainState(
            epoch=int(saved["epoch"]),
            step=int(saved["step"]),
            history=list(saved["history"]),
            step_losses=list(saved["step_losses"]),
        )
        log(f"[train] resuming from {resume} at epoch {state.epoch}")
    elif (
        dist.is_main and resume.is_file()
    ):  # another run's partial training: the first epoch would overwrite it
        kept = model_file.free_name(resume, "prev")
        if manifest_path(resume).is_file():
            os.replace(manifest_path(resume), manifest_path(kept))
        os.replace(resume, kept)
        log(f"[train] {resume} is not resumed (other settings or --force); kept as {kept}")
    return state


def _refuse_zero_steps(cfg: Config, split, out: Path) -> None:
    """Settings under which training would take no step (or learn from nothing) and still write an
    untrained ``model.pt``: refused before anything is built."""
    t, ann = cfg.train, split.ann_file
    if not split.images:
        raise DataError(f"{ann}: no training images")
    if t.epochs < 1:
        raise ConfigError(
            f"{cfg.source}: train.epochs is {t.epochs}: training would take no step and "
            f"write an untrained {out}"
        )
    if t.batch_size > len(split.images):
        raise ConfigError(
            f"{cfg.source}: train.batch_size {t.batch_size} is larger than the {len(split.images)} "
            f"training images of {ann}: with whole batches only, training would take no step "
            f"(lower train.batch_size)"
        )
    if not any(len(r.boxes) for r in split.images):
        skipped = f" ({len(split.skipped)} skipped as unusable)" if split.skipped else ""
        raise DataError(
            f"{ann}: no usable annotations on the {len(split.images)} training images{skipped}: "
            "nothing to learn"
        )

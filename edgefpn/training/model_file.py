"""The detector a run trains or loads, and the ``model.pt`` it becomes.

Both ways to a ``model.pt`` (training, and loading ``model.weights``) build the detector from the
config, record the same meta with it (the builder's arguments, from which loading rebuilds it) and
replace the previous file the same way (kept as ``model.prev-<UTC time>.pt``). They live here, apart
from the stage's decisions (freshness, refusal, which rank writes) in :mod:`edgefpn.pipeline.train`,
because they change with the model registry and the checkpoint format, not with those decisions.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from edgefpn.artifacts import manifest_path, sha256_file
from edgefpn.config import Config
from edgefpn.errors import ConfigError
from edgefpn.pipeline.common import log

__all__ = ["build", "free_name", "keep_previous", "load_backbone", "meta"]


def meta(
    cfg: Config, num_classes: int, class_names: tuple[str, ...] | None, category_ids: tuple[int, ...] | None
) -> dict[str, Any]:
    """The ``meta`` saved in ``model.pt``: what loading needs to rebuild the detector and name its classes."""
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


def build(cfg: Config, num_classes: int):
    """The configured detector, untrained; a combination its builder refuses is a ``ConfigError``."""
    from edgefpn.models.registry import arch_spec

    spec = arch_spec(cfg.model.arch)
    try:
        return spec.builder(num_classes=num_classes, **spec.build_kwargs(cfg.model))
    except ValueError as exc:  # a combination the builder refuses (e.g. mobilenet_v3_large + variant v2)
        raise ConfigError(f"{cfg.source}: model: {exc}") from None


def load_backbone(cfg: Config, model) -> None:
    """ImageNet weights into the backbone, then torchvision's frozen stages."""
    from edgefpn.models.pretrained import DEFAULT_TRAINABLE_LAYERS, freeze_backbone, load_backbone_weights

    m = cfg.model
    if not m.backbone_weights:  # the caller loads only when it is set
        return
    load_backbone_weights(model, m.backbone_weights, backbone=m.backbone)
    layers = DEFAULT_TRAINABLE_LAYERS if m.trainable_layers is None else m.trainable_layers
    freeze_backbone(model, backbone=m.backbone, trainable_layers=layers)
    log(f"[train] backbone weights from {m.backbone_weights}; {layers} trainable backbone stages, frozen BN")


def keep_previous(out: Path, new: Path) -> None:
    """Before ``new`` replaces ``out``: keep ``out`` and its manifest as ``model.prev-<UTC time>.pt``.

    Hard links where the file system allows (no copy; the replace then only renames over the name),
    so a write that fails still leaves ``out`` in place. Nothing is kept when the bytes are the same.
    """
    if not out.is_file() or sha256_file(out) == sha256_file(new):
        return
    dest = free_name(out, "prev")
    for src, dst in ((out, dest), (manifest_path(out), manifest_path(dest))):
        if src.is_file():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    log(f"[train] the previous {out.name} is kept as {dest} (with its manifest)")


def free_name(path: Path, tag: str) -> Path:
    """``<stem>.<tag>-<UTC time>[-n]<suffix>`` beside ``path``, not yet taken (manifest included)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    stem, suffix = path.stem, path.suffix
    for n in range(1, 1000):
        cand = path.with_name(f"{stem}.{tag}-{stamp}{'' if n == 1 else f'-{n}'}{suffix}")
        if not os.path.lexists(cand) and not os.path.lexists(manifest_path(cand)):
            return cand
    raise ConfigError(f"{path.parent}: too many kept models named {stem}.{tag}-{stamp}*; remove some")

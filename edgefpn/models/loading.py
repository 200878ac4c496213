"""Rebuild a model from an edgefpn checkpoint's metadata (used by the torch runner and export)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from edgefpn.errors import CheckpointError
from edgefpn.models.checkpoint import load_checkpoint
from edgefpn.models.export import ExportWrapper
from edgefpn.models.registry import build_model

# checkpoint meta keys that are builder arguments
_BUILD_KEYS = ("backbone_name", "fpn_channels", "head_convs", "norm")
_OPTIONAL_BUILD_KEYS = ("backbone_width", "neck")  # absent from older checkpoints: the builder's default


def build_from_meta(meta: Mapping[str, Any]) -> nn.Module:
    try:
        kwargs = {k: meta[k] for k in _BUILD_KEYS} | {k: meta[k] for k in _OPTIONAL_BUILD_KEYS if k in meta}
        return build_model(arch=meta["arch"], num_classes=int(meta["num_classes"]), **kwargs)
    except KeyError as exc:
        raise CheckpointError(f"checkpoint metadata lacks {exc.args[0]!r}") from None


def model_from_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode model saved at ``path`` and its metadata."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta")
    if ckpt.get("format") != "edgefpn" or not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not an edgefpn checkpoint (no metadata); load it through model.weights")
    model = build_from_meta(meta)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not fit its own metadata: {str(exc).splitlines()[0]}") from None
    return model.eval(), meta


def wrapper_from_checkpoint(path: Path) -> tuple[ExportWrapper, list[str]]:
    """The export wrapper (fixed per-level outputs) of the checkpoint, and its output names."""
    model, _ = model_from_checkpoint(path)
    wrapper = ExportWrapper(model).eval()
    return wrapper, list(wrapper.output_names())

"""Rebuild a model from an edgefpn checkpoint's metadata (used by the torch runner and export)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from edgefpn.errors import CheckpointError
from edgefpn.models.checkpoint import load_checkpoint
from edgefpn.models.outputs import ExportModule
from edgefpn.models.registry import ARCHITECTURES, build_model, export_wrapper

# Checkpoints written before meta["build"] existed (FCOS only) keep the builder arguments at the top.
_LEGACY_BUILD_KEYS = ("backbone_name", "fpn_channels", "head_convs", "norm")
_LEGACY_OPTIONAL_BUILD_KEYS = ("backbone_width",)


def build_from_meta(meta: Mapping[str, Any]) -> nn.Module:
    """The (untrained) model that ``meta`` describes: ``meta["arch"]``'s builder with ``meta["build"]``."""
    try:
        arch = meta["arch"]
        if not isinstance(arch, str) or arch not in ARCHITECTURES:
            raise CheckpointError(
                f"checkpoint metadata names unknown arch {arch!r}; valid: {', '.join(ARCHITECTURES)}"
            )
        if isinstance(meta.get("build"), Mapping):
            kwargs = dict(meta["build"])
        else:
            kwargs = {k: meta[k] for k in _LEGACY_BUILD_KEYS}
            kwargs |= {k: meta[k] for k in _LEGACY_OPTIONAL_BUILD_KEYS if k in meta}
        return build_model(arch=arch, num_classes=int(meta["num_classes"]), **kwargs)
    except KeyError as exc:
        raise CheckpointError(f"checkpoint metadata lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:  # tampered or foreign meta["build"]: a bad key or value
        raise CheckpointError(f"checkpoint metadata does not describe a buildable model: {exc}") from None


def model_from_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode model saved at ``path`` and its metadata."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta")
    if ckpt.get("format") != "edgefpn" or not isinstance(meta, dict):
        raise CheckpointError(
            f"{path}: not an edgefpn checkpoint (no metadata); load it through model.weights"
        )
    model = build_from_meta(meta)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not fit its own metadata: {str(exc).splitlines()[0]}") from None
    return model.eval(), meta


def wrapper_from_checkpoint(path: Path) -> tuple[ExportModule, list[str]]:
    """The export wrapper (the arch's fixed outputs) of the checkpoint, and its output names."""
    model, meta = model_from_checkpoint(path)
    wrapper = export_wrapper(meta["arch"], model)
    return wrapper, list(wrapper.output_names())

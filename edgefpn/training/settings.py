"""The settings a model was made with: what shapes ``model.pt`` (its config hash and the dotted keys its
manifest records), and why a ``model.pt`` on disk is not the one given settings make, naming the keys
that differ."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefpn.artifacts import sha256_file
from edgefpn.config import Config, to_dict
from edgefpn.errors import ConfigError
from edgefpn.manifests import record, trained_settings
from edgefpn.stages import TRAIN, TRAIN_FROM_WEIGHTS, TRAIN_NOT_SHAPING

__all__ = [
    "differences",
    "model_config_hash",
    "model_settings",
    "refusal",
    "stale_reason",
    "train_config_hash",
]

_SHOWN_DIFFERENCES = 5  # settings named with both values in a refusal; the rest by name only

# What does not shape the trained weights (edgefpn.stages.TRAIN_NOT_SHAPING). The world size is not a
# setting at all (the same config is the same optimisation on any number of ranks; tested).
# train.device and train.amp are in: a model trained on another device or precision differs beyond
# float rounding.
_NOT_SHAPING = TRAIN_NOT_SHAPING


def train_config_hash(cfg: Config) -> str:
    """What shapes the trained weights (:data:`edgefpn.stages.TRAIN`): model, train settings (but
    :data:`_NOT_SHAPING`), seed, split."""
    return TRAIN.config_hash(cfg)


def model_config_hash(cfg: Config) -> str:
    """The ``config_hash`` of ``model.pt``: the config sections that shape it."""
    return (TRAIN_FROM_WEIGHTS if cfg.model.weights else TRAIN).config_hash(cfg)


def model_settings(cfg: Config) -> dict[str, Any]:
    """The settings that make ``model.pt``, as dotted keys: recorded in its manifest, so that a later
    command with other settings can name the keys that differ.

    They cover ``config_hash``'s sections, plus, for the built-in dataset, the generator settings that
    shape its train and val images (those change the training data without being hashed: the
    annotations' sha256 is). ``num_calib`` is left out: it changes no train or val image."""
    if cfg.model.weights:
        tree: dict[str, Any] = {"model": to_dict(cfg.model), "data": {"root": cfg.data.root}}
    else:
        data: dict[str, Any] = {"train_split": cfg.data.train_split}
        if cfg.data.builtin:
            data["synth"] = {k: v for k, v in to_dict(cfg.data.synth).items() if k != "num_calib"}
        train = {k: v for k, v in to_dict(cfg.train).items() if k not in _NOT_SHAPING}
        tree = {"model": to_dict(cfg.model), "train": train, "run": {"seed": cfg.run.seed}, "data": data}
    return json.loads(json.dumps(_flatten(tree)))  # as a manifest reads back: lists, not tuples


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_SYNTH = "data.synth."


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key (trained X, given Y)`` for each setting that differs, sorted by key.

    Keys on both sides come first: a trained model against a loaded checkpoint differs in
    ``model.weights``, and listing every ``train.*`` key as unset on one side would hide it. Keys on
    one side only are named when nothing else differs. The built-in dataset's settings count only
    when both sides generated it: a generated folder then used as a plain dataset
    (``data.builtin=false``) holds the same images.
    """
    both_synth = any(k.startswith(_SYNTH) for k in recorded) and any(k.startswith(_SYNTH) for k in current)
    keys = [k for k in sorted(set(recorded) | set(current)) if both_synth or not k.startswith(_SYNTH)]
    unset = object()
    shared: list[str] = []
    one_sided: list[str] = []
    for key in keys:
        a, b = recorded.get(key, unset), current.get(key, unset)
        if a != b:
            show = [json.dumps(v) if v is not unset else "unset" for v in (a, b)]
            (one_sided if unset in (a, b) else shared).append(f"{key} (trained {show[0]}, given {show[1]})")
    return shared or one_sided


def stale_reason(
    out: Path, chash: str, settings: Mapping[str, Any], inputs: Mapping[str, str] | None = None
) -> str | None:
    """Why ``out`` is not the model these settings (and ``inputs``, when given) make, or None."""
    made = record(out)
    if not out.exists():
        return "no trained model in this run directory"
    if made is None:
        return "has no manifest (its training was interrupted, or it was not made by edgefpn)"
    recorded = trained_settings(made)
    diffs = differences(recorded, settings) if recorded is not None else []
    if diffs:
        shown = ", ".join(diffs[:_SHOWN_DIFFERENCES])
        rest = [d.split(" ", 1)[0] for d in diffs[_SHOWN_DIFFERENCES:]]
        more = f" and {len(rest)} more ({', '.join(rest)})" if rest else ""
        return f"trained with other settings than these: {shown}{more}"
    if made.config_hash != chash:
        return (
            "made with other settings than these (its manifest records no settings to compare: "
            "an older edgefpn made it)"
        )
    if inputs is not None:
        changed = sorted(k for k, v in inputs.items() if made.inputs.get(k) != v)
        if changed:
            return f"trained on other data ({', '.join(changed)} changed since)"
        if made.sha256 != sha256_file(out):
            return "does not match its manifest (modified or partly written)"
    return None


def refusal(out: Path, why: str, command: str) -> ConfigError:
    if not out.exists():
        fix = "train it first with these settings: `edgefpn train` (or `edgefpn run` for every stage)"
    else:
        fix = (
            "give the same --config/--set as when it was trained, or train it again with these: "
            "`edgefpn train` (it keeps the current model as model.prev-<time>.pt)"
        )
    return ConfigError(f"{out}: {why}; `{command}` never trains: {fix}")

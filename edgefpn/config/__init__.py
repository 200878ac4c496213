"""Frozen, typed configuration loaded from YAML, with dotted ``--set a.b=c`` overrides.

The config is resolved once, validated on load and never mutated: a stage that must change a
setting builds a new config with :func:`dataclasses.replace` and records it in its manifest.

The package re-exports its public names, so ``from edgefpn.config import X`` is the one import path:
``sections`` (the dataclasses and their defaults), ``loading`` (YAML, overrides, typed build),
``validation`` (what a value must be) and ``hashing`` (to_dict, config_hash, dump_yaml).
"""

from __future__ import annotations

from edgefpn.config.hashing import config_hash, dump_yaml, to_dict
from edgefpn.config.loading import MAX_CONFIG_BYTES, load_config
from edgefpn.config.sections import (
    BACKBONE_NAMES,
    PRECISIONS,
    AugmentConfig,
    BuildConfig,
    CheckConfig,
    Config,
    CropConfig,
    DataConfig,
    DeployConfig,
    ExportConfig,
    ModelConfig,
    PhotometricConfig,
    PostprocessConfig,
    QuantizeConfig,
    RpnConfig,
    RunConfig,
    SynthConfig,
    TensorRTConfig,
    TrainConfig,
)

__all__ = [
    "BACKBONE_NAMES",
    "MAX_CONFIG_BYTES",
    "PRECISIONS",
    "AugmentConfig",
    "BuildConfig",
    "CheckConfig",
    "Config",
    "CropConfig",
    "DataConfig",
    "DeployConfig",
    "ExportConfig",
    "ModelConfig",
    "PhotometricConfig",
    "PostprocessConfig",
    "QuantizeConfig",
    "RpnConfig",
    "RunConfig",
    "SynthConfig",
    "TensorRTConfig",
    "TrainConfig",
    "config_hash",
    "dump_yaml",
    "load_config",
    "to_dict",
]

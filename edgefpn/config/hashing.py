"""Hashing and dumping a config: the plain JSON view of any section, its sha256, and the YAML dump.

Separate from loading because this is what manifests and stage keys read (``config_hash`` of the
sections a stage depends on): a change here changes every recorded hash, so it stays small and apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import yaml

from edgefpn.config.sections import Config, _settings


def to_dict(obj: Any) -> Any:
    """A plain, JSON-able view of a config (or any part of one)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in _settings(type(obj))}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in sorted(obj.items())}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def config_hash(*parts: Any) -> str:
    """sha256 over the canonical JSON of the given config sections (order matters)."""
    blob = json.dumps([to_dict(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

"""Typed reads of what one stage recorded for another: the only place manifest fields are read by name.

A stage writes its manifest through its :class:`edgefpn.stages.StageKey`; a later stage, the
lineage checks and the packager read it back here, as a :class:`Record` (the fields every manifest
has, plus the source fields of build and e2e manifests) or a stage's own view (:class:`ModelMeta`,
:class:`Int8Result`). A renamed field then breaks one module, not a string in five.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefpn.artifacts import Artifact, read_manifest, sha256_path

MODEL = "model.pt"


@dataclass(frozen=True)
class Record:
    """One artifact's manifest: what made it, from what, and (for engines) from which source file."""

    path: Path
    stage: str | None
    sha256: str | None
    config_hash: str | None
    inputs: Mapping[str, str]
    versions: Mapping[str, str]
    created_unix: int | None = None
    precision: str | None = None
    backend_version: str | None = None
    source_path: str | None = None  # build manifests: the file the engine was made from
    e2e_source: str | None = None  # e2e manifests: the raw twin the graph was grafted onto
    fields: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the whole manifest

    def intact(self) -> bool:
        """The artifact is on disk and matches the sha256 recorded for it."""
        return self.path.exists() and self.sha256 == sha256_path(self.path)


def record(path: Path) -> Record | None:
    """``path``'s manifest, typed; None when it has none (or an unreadable one)."""
    m = read_manifest(path)
    return None if m is None else _record(path, m)


def record_of(art: Artifact) -> Record:
    return _record(art.path, art.manifest)


def _record(path: Path, m: Mapping[str, Any]) -> Record:
    source = m.get("source")
    e2e_source = m.get("e2e_source")
    return Record(
        path=path,
        stage=m.get("stage"),
        sha256=m.get("sha256"),
        config_hash=m.get("config_hash"),
        inputs=dict(m.get("inputs") or {}),
        versions=dict(m.get("versions") or {}),
        created_unix=m.get("created_unix"),
        precision=m.get("precision"),
        backend_version=m.get("backend_version"),
        source_path=str(source["path"]) if isinstance(source, dict) and "path" in source else None,
        e2e_source=e2e_source if isinstance(e2e_source, str) else None,
        fields=m,
    )


def recorded_sha256(path: Path) -> str | None:
    """The sha256 ``path``'s manifest records (None without one)."""
    r = record(path)
    return None if r is None else r.sha256


@dataclass(frozen=True)
class ModelMeta:
    """What ``model.pt``'s manifest says about the model (all empty before one exists)."""

    arch: str | None = None
    num_classes: int = 0
    class_names: list[str] | None = None
    category_ids: list[int] | None = None


def model_meta(run_dir: Path) -> ModelMeta:
    meta = ((read_manifest(run_dir / MODEL) or {}).get("meta")) or {}
    return ModelMeta(
        arch=meta.get("arch") or None,
        num_classes=int(meta.get("num_classes") or 0),
        class_names=meta.get("class_names") or None,
        category_ids=meta.get("category_ids") or None,
    )


def trained_settings(made: Record) -> Mapping[str, Any] | None:
    """The dotted settings ``model.pt`` was made with (None from an edgefpn that recorded none)."""
    settings = made.fields.get("settings")
    return settings if isinstance(settings, Mapping) else None


@dataclass(frozen=True)
class Int8Result:
    """What the QDQ INT8 loop recorded: the nodes kept in float and its accuracy (see quantize)."""

    exclude_nodes: list[str]
    accuracy: Mapping[str, Any]


def int8_result(art: Artifact) -> Int8Result:
    return Int8Result(
        exclude_nodes=list(art.manifest.get("exclude_nodes", [])),
        accuracy=art.manifest.get("accuracy", {}),
    )


def onnx_batch(art: Artifact) -> int:
    """The batch of an exported ONNX (its input's first dimension), 1 when it records none."""
    shape = art.manifest.get("input", {}).get("shape")
    return int(shape[0]) if shape else 1


def check_failures(art: Artifact) -> list[str]:
    """The gates the check report failed, as recorded with it."""
    return list(art.manifest.get("failures", []))

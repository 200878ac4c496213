"""What every backend's ``build`` receives and records: the ONNX it reads and the manifest fields
shared by all engines (edgefpn.pipeline.build hands these to ``Backend.build``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BuildSource", "engine_extra", "engine_record"]


@dataclass(frozen=True)
class BuildSource:
    """An ONNX the build reads: its file, sha256 (from its manifest), input spec and TensorRT lint findings."""

    path: Path
    sha256: str
    input: dict[str, Any]
    lint: list[Any]  # edgefpn.lint.Finding

    def describe(self) -> dict[str, Any]:
        return {"path": self.path.name, "sha256": self.sha256}


def engine_extra(
    target: str,
    precision: str,
    src: BuildSource,
    backend_version: str,
    settings: dict[str, Any],
    *,
    source: dict[str, Any] | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The build manifest fields of one engine (``source``: what it was made from, default ``src``)."""
    return {
        "target": target,
        "precision": precision,
        "source": source or src.describe(),
        "input": src.input,
        "backend_version": backend_version,
        "settings": settings,
        "lint": [f.to_dict() for f in src.lint],
        **more,
    }


def engine_record(
    target: str,
    precision: str,
    src: BuildSource,
    backend_version: str,
    settings: dict[str, Any],
    *,
    config_hash: str,
    inputs: dict[str, str],
    **more: Any,
) -> dict[str, Any]:
    """``write_manifest``'s keyword arguments for an engine a backend's ``build`` made: every build
    records the same stage, key and :func:`engine_extra` fields."""
    return {
        "stage": "build",
        "config_hash": config_hash,
        "inputs": inputs,
        "extra": engine_extra(target, precision, src, backend_version, settings, **more),
    }

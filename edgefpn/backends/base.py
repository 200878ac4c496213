"""The one small protocol every backend implements (Polygraphy-style runners)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

INPUT_NAME = "images"


@dataclass(frozen=True)
class EngineSpec:
    """One engine in a run directory: what to load, with which backend, at which precision."""

    name: str  # e.g. "onnxruntime-fp32"
    backend: str  # a key of edgefpn.backends.RUNNERS
    precision: str  # fp32 | fp16 | int8
    path: Path


@runtime_checkable
class Runner(Protocol):
    """A loaded engine. Use as a context manager; ``infer`` maps input names to arrays."""

    spec: EngineSpec

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

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


def engine_batch(runner: object) -> int | None:
    """The static batch of a loaded engine's input (``io_shapes()[images][0]``), None when dynamic or unknown."""
    shapes = runner.io_shapes() if hasattr(runner, "io_shapes") else {}
    shape = shapes.get(INPUT_NAME, shapes.get("images_u8"))  # float input, or an in-graph twin's uint8 image
    if shape and isinstance(shape[0], int) and shape[0] > 0:
        return int(shape[0])
    return None


class BatchedRunner:
    """A runner whose ``infer`` takes any number of images for a static-batch engine.

    An engine exported with ``export.batch = N`` accepts exactly ``N`` images; callers that have fewer
    (one image at a time, the last partial batch of the val set) or more get the feed cut into chunks
    of ``N``, the last one filled by repeating its last image, and the outputs cut back to the images
    given. Every output of an edgefpn engine leads with the batch. For ``N == 1`` and for a feed of
    exactly ``N`` images, ``infer`` is the engine's own call: batch-1 results are unchanged.
    """

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.batch: int | None = None

    def __enter__(self) -> BatchedRunner:
        self.inner.__enter__()
        self.batch = engine_batch(self.inner)
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)

    def __getattr__(self, name: str) -> object:  # compiled, io_shapes, hint...: the engine's own
        if name == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = self.batch
        k = len(next(iter(feed.values())))  # every input leads with the batch (images, images_u8, valid_hw)
        if n is None or k == n:
            return self.inner.infer(feed)
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, k, n):
            chunk = {name: value[start:start + n] for name, value in feed.items()}
            got = k - start if k - start < n else n
            if got < n:  # fill with the chunk's last image: real data, cut away below
                chunk = {name: np.concatenate([v, np.repeat(v[-1:], n - got, axis=0)]) for name, v in chunk.items()}
            out = self.inner.infer(chunk)
            for name, value in out.items():
                if value.ndim == 0 or value.shape[0] != n:
                    raise ValueError(f"{self.spec.path}: output {name!r} {list(value.shape)} does not lead "
                                     f"with the engine batch {n}; cannot split it per image")
            parts.append({name: value[:got] for name, value in out.items()})
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

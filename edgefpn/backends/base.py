"""The one small protocol every backend implements (Polygraphy-style runners), the base that holds
what every runner repeats, and the :class:`Backend` record that says everything else about a target."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgefpn.errors import BackendUnavailable

INPUT_NAME = "images"
# a detections engine's float32 [N] score threshold input (edgefpn.e2e.graph; fed by edgefpn.inference)
THRESH_INPUT = "score_thresh"


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


class BaseRunner:
    """What every runner repeats, held once (Polygraphy's ``BaseRunner``): the spec and thread count,
    the availability check before anything loads, and the "outside its context" guard.

    A subclass names the modules it needs (``requires``) and how to install them (``install``), and
    implements ``_load`` (open the engine; return nothing), ``_unload``, ``_infer`` and, where the
    backend knows them, ``_io_shapes``. :meth:`open` is how the device runtime makes one (a subclass
    may take the runtime's ``hint`` or refuse to write beside a bundled engine).
    """

    requires: tuple[str, ...] = ()  # modules imported (lazily) to load and run an engine
    install: str = ""  # the one-line install hint

    def __init__(self, spec: EngineSpec, *, threads: int) -> None:
        self.spec = spec
        self.threads = threads
        self._loaded = False

    @classmethod
    def open(cls, spec: EngineSpec, *, threads: int, hint: str = "latency") -> BaseRunner:
        """The runner the device runtime uses for a bundled engine (``hint``: a throughput-mode hint)."""
        return cls(spec, threads=threads)

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this runner cannot run here (one line), or None. Imports ``requires`` (lazily, here only)."""
        for module in cls.requires:
            try:
                importlib.import_module(module)
            except (ImportError, OSError):  # OSError: a wheel whose shared libraries do not load
                return (
                    f"{module} is not installed: {cls.install}"
                    if cls.install
                    else f"{module} is not installed"
                )
        return None

    @classmethod
    def is_available(cls) -> bool:
        return cls.unavailable() is None

    def __enter__(self) -> BaseRunner:
        reason = type(self).unavailable()
        if reason is not None:
            raise BackendUnavailable(reason)
        self._load()
        self._loaded = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._loaded = False
        self._unload()

    def _guard(self, what: str) -> None:
        if not self._loaded:
            raise RuntimeError(f"{type(self).__name__}.{what} called outside its context")

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._guard("infer")
        return self._infer(feed)

    def io_shapes(self) -> dict[str, tuple]:
        """Every input's and output's shape as the loaded engine declares it."""
        self._guard("io_shapes")
        return self._io_shapes()

    def _load(self) -> None:
        raise NotImplementedError

    def _unload(self) -> None:
        raise NotImplementedError

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _io_shapes(self) -> dict[str, tuple]:
        return {}


# Throughput modes: how several requests share one engine (edgefpn.runtime.engines, the offline sweep).
THROUGHPUT_MODES = (
    "requests",  # the backend's own async infer requests and streams (OpenVINO)
    "cuda-streams",  # one execution context per request, each on its own CUDA stream (TensorRT)
    "threads",  # one runner per request, each on a host thread (thread-safe sessions: ONNX Runtime)
    "serial",  # one request at a time: the runner is not known to be thread-safe
)


@dataclass(frozen=True)
class Backend:
    """Everything about one target, in one place (``edgefpn/backends/<name>.py``; listed in
    ``edgefpn.backends.BACKENDS``, its stdlib half in ``edgefpn.backend_names.NAMES``).

    Every callable imports its backend's package lazily: the record itself imports on any machine.
    """

    name: str
    runner: type[BaseRunner]
    precisions: tuple[str, ...]  # the precisions its engines are made at
    needs_gpu: bool
    file_kind: str  # what its engine file is, for messages and docs
    # where its engine at a precision lives in a run directory
    engine_path: Callable[[Path, str], Path]
    # why it cannot build or run here (one line), or None
    unavailable: Callable[[], str | None]
    # why this device cannot run a bundled engine (a bundle manifest entry), or None. Imports no backend;
    # ``probe`` is the TensorRT probe the runtime passes (tests give a fake one), ignored by the others.
    target_problem: Callable[[Mapping[str, Any], Callable[[], tuple] | None], str | None]
    # the bundle manifest's ``target`` for one engine: (precision, its build manifest) -> dict
    bundle_target: Callable[[str, Mapping[str, Any]], dict[str, Any]]
    throughput: str  # one of THROUGHPUT_MODES
    # (cfg, run_dir, precision, source, *, force) -> Artifact; None: the export / quantize stages make its
    # engines
    build: Callable[..., Any] | None = None
    # for a backend the export / quantize stages make: (cfg, precision) -> why the config does not make it,
    # or None
    not_made: Callable[[Any, str], str | None] | None = None
    # its ``-e2e`` twin (edgefpn.pipeline.e2e) of the engine at a precision:
    # (cfg, run_dir, precision, e2e ONNX twins by precision, *, source, force) -> Artifact or None; None: no
    # twins
    e2e: Callable[..., Any] | None = None
    # files build writes whatever the availability (cfg, run_dir, precision, source) -> path or None
    # (TensorRT's trtexec.sh: the same build on the target device)
    side_files: Callable[..., Path | None] | None = None
    # the device runtime's fixed order without a measurement: backends by rank (lower first), each in its
    # preferred precision order (edgefpn.runtime.PREFERENCE)
    rank: int = 100
    preferred: tuple[str, ...] = ()
    reads_onnx: bool = False  # its engine file is an ONNX (refuse external data before it is read)
    benchmark_app: bool = False  # `edgefpn benchmark` cross-checks it with OpenVINO's benchmark_app

    def engines(self, run_dir: Path) -> tuple[tuple[str, str, str, str], ...]:
        """(name, backend, precision, path relative to ``run_dir``) of every engine it can make."""
        return tuple(
            (f"{self.name}-{p}", self.name, p, self.engine_path(run_dir, p).relative_to(run_dir).as_posix())
            for p in self.precisions
        )


def engine_batch(runner: object) -> int | None:
    """The static batch of a loaded engine's input (``io_shapes()[images][0]``), None when dynamic or
    unknown."""
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

    def __getattr__(self, name: str) -> Any:  # compiled, io_shapes, hint...: the engine's own
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
            chunk = {name: value[start : start + n] for name, value in feed.items()}
            got = k - start if k - start < n else n
            if got < n:  # fill with the chunk's last image: real data, cut away below
                chunk = {
                    name: np.concatenate([v, np.repeat(v[-1:], n - got, axis=0)]) for name, v in chunk.items()
                }
            out = self.inner.infer(chunk)
            for name, value in out.items():
                if value.ndim == 0 or value.shape[0] != n:
                    raise ValueError(
                        f"{self.spec.path}: output {name!r} {list(value.shape)} does not lead "
                        f"with the engine batch {n}; cannot split it per image"
                    )
            parts.append({name: value[:got] for name, value in out.items()})
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

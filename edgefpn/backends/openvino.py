"""OpenVINO: ONNX -> IR conversion and a CPU runner with pinned inference precision.

Precision on CPU. OpenVINO separates the IR's *storage* precision from the *inference* precision, and
on a CPU with AVX-512 BF16 or AMX its default inference precision is bf16, even for an FP32 IR
(https://docs.openvino.ai/2025/openvino-workflow/running-inference/optimize-inference/precision-control.html).
An "fp32" engine silently running bf16 would fail (or worse, pass) the check stage for the wrong
reason, so every engine here is compiled with ``INFERENCE_PRECISION_HINT=f32``, and the runner
verifies the compiled model reports f32:

* fp32 IR: f32 weights, f32 compute.
* fp16 IR (``compress_to_fp16=True``): f16 *weights*, decompressed and computed in f32. CPUs have no
  general fp16 compute (only AVX512-FP16 / AMX-FP16 parts do), so "fp16" on CPU measures the effect
  of fp16 weight storage, which is what an fp16 IR deploys.
* int8 IR (NNCF or converted Q/DQ): quantized ops run int8; the rest is pinned to f32 so the engine
  measures int8 quantization alone, not int8 plus bf16.

Nothing here runs bf16 unless a caller passes ``inference_precision="bf16"`` explicitly.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.artifacts import sha256_file
from edgefpn.backends.base import Backend, BaseRunner, EngineSpec
from edgefpn.backends.building import BuildSource, engine_extra
from edgefpn.errors import ModelFileError

__all__ = [
    "BACKEND",
    "IR_NAME",
    "OpenVinoRunner",
    "ir_xml",
    "onnx_to_openvino",
    "openvino_version",
    "shared_core",
]

IR_NAME = "model.xml"
_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
_INSTALL = "pip install 'edgefpn[openvino]' (or: pip install openvino)"
# OpenVINO on CPU computes in f32 for every engine (module docstring); recorded per engine and bundle.
INFERENCE_PRECISION = "f32"


def openvino_version() -> str:
    import openvino as ov

    return ov.get_version()


_CORE_LOCK = threading.Lock()
_CORE: Any = None


def shared_core() -> Any:
    """The process's one ``openvino.Core``: every engine edgefpn compiles comes from it.

    Why one: each Core's CPU plugin installs an alternate signal stack on the thread that creates it
    and, when it is destroyed, puts back the one it found and unmaps its own (OpenVINO 2026.4). Two
    plugins released out of order (A and B created, A released first) leave that thread's alternate
    stack pointing at unmapped memory, and the next signal Python handles there (Ctrl-C; SIGCHLD once
    torch's DataLoader has set a handler) kills the process with SIGSEGV or corrupts its heap. One
    Core kept for the life of the process means one plugin, created once and never released early
    (``tests/backends/test_openvino_signals.py``).
    """
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


def ir_xml(path: Path) -> Path:
    """The ``.xml`` of an IR given as the xml itself or as its folder (an engine artifact)."""
    return path / IR_NAME if path.is_dir() else path


def onnx_to_openvino(onnx_path: Path, xml_path: Path, *, compress_to_fp16: bool) -> list[str]:
    """Convert an ONNX file to IR (``xml_path`` + ``.bin``); return the output names.

    ``compress_to_fp16`` is always given explicitly: ``openvino.save_model`` compresses to fp16 by
    default, which would quietly turn an "fp32" IR into fp16 weights.

    Raises:
        ModelFileError: conversion failed, or an output lost its ONNX name on the way.
    """
    import onnx
    import openvino as ov

    from edgefpn.onnx_guard import check_onnx_file

    check_onnx_file(onnx_path)
    expected = [o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output]
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpenVINO raises its own untyped errors for bad graphs
        raise ModelFileError(f"{onnx_path}: OpenVINO cannot convert it: {_first_line(exc)}") from exc
    names = [port.get_any_name() if port.get_names() else "" for port in model.outputs]
    if names != expected:
        raise ModelFileError(
            f"{onnx_path}: OpenVINO IR outputs {names} do not match the ONNX outputs {expected}"
        )
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    except (
        Exception
    ) as exc:  # OpenVINO's writer fails with an untyped "basic_ios::clear", even on a full disk
        # and removes what it wrote, so the free space is compared with what the IR needs (~ the weights)
        needed = onnx_path.stat().st_size // (2 if compress_to_fp16 else 1)
        if shutil.disk_usage(xml_path.parent).free < needed:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({_first_line(exc)})") from exc
        raise ModelFileError(f"{xml_path}: OpenVINO cannot write the IR: {_first_line(exc)}") from exc
    return names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OpenVinoRunner(BaseRunner):
    """Runs an OpenVINO IR on the CPU: fixed threads, a performance hint, f32 inference precision.

    Compiled models are cached (OpenVINO's ``CACHE_DIR``) in ``cache_root/<key>``, where the key hashes
    the IR's xml and bin, the OpenVINO version and the compile config: a changed IR or setting never
    reuses a stale blob. By default ``cache_root`` is ``.ov-cache`` beside the engine's folder (for
    ``RUN_DIR/openvino/fp32/model.xml``: ``RUN_DIR/openvino/.ov-cache``), outside the artifact.
    """

    requires = ("openvino",)
    install = _INSTALL

    def __init__(
        self,
        spec: EngineSpec,
        *,
        threads: int,
        hint: str = "latency",
        inference_precision: str = INFERENCE_PRECISION,
        cache_root: Path | None = None,
        use_cache: bool = True,
    ) -> None:
        if hint not in _HINTS:
            raise ValueError(f"hint must be one of {sorted(_HINTS)}, got {hint!r}")
        super().__init__(spec, threads=threads)
        self.hint = hint
        self.inference_precision = inference_precision
        self.cache_root = cache_root
        self.use_cache = use_cache
        self.cache_dir: Path | None = None
        self.compiled: Any = None  # ov.CompiledModel and its InferRequest once loaded (untyped package)
        self._request: Any = None
        self._outputs: list[tuple[Any, str]] = []

    @classmethod
    def open(cls, spec: EngineSpec, *, threads: int, hint: str = "latency") -> OpenVinoRunner:
        # no compile cache: it would write into the verified bundle folder
        return cls(spec, threads=threads, hint=hint, use_cache=False)

    def config(self) -> dict[str, Any]:
        return {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": _HINTS[self.hint],
            "INFERENCE_PRECISION_HINT": self.inference_precision,
        }

    def _load(self) -> None:
        import openvino as ov

        xml = ir_xml(self.spec.path)
        bin_ = xml.with_suffix(".bin")
        if not xml.is_file() or not bin_.is_file():
            raise ModelFileError(f"{xml}: OpenVINO IR not found (needs {xml.name} and {bin_.name})")
        config = self.config()
        if self.use_cache:
            self.cache_dir = self._cache_dir(xml, bin_, config, ov.get_version())
            config["CACHE_DIR"] = str(self.cache_dir)
        try:
            self.compiled = shared_core().compile_model(str(xml), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError for anything from a bad IR to a bad config
            raise ModelFileError(f"{xml}: OpenVINO cannot compile it: {_first_line(exc)}") from exc
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        if got != getattr(ov.Type, self.inference_precision):
            raise ModelFileError(
                f"{xml}: compiled with inference precision {got}, not the requested "
                f"{self.inference_precision}"
            )
        self._outputs = [(port, port.get_any_name()) for port in self.compiled.outputs]
        self._request = self.compiled.create_infer_request()

    def _cache_dir(self, xml: Path, bin_: Path, config: Mapping[str, Any], version: str) -> Path:
        blob = json.dumps(
            {"xml": sha256_file(xml), "bin": sha256_file(bin_), "openvino": version, "config": dict(config)},
            sort_keys=True,
        )
        key = hashlib.sha256(blob.encode()).hexdigest()[:24]
        root = self.cache_root if self.cache_root is not None else xml.parent.parent / ".ov-cache"
        return root / key

    def _io_shapes(self) -> dict[str, tuple]:
        """Every input's and output's shape in the compiled model (-1 for a dynamic dimension)."""
        return {
            (port.get_any_name() if port.get_names() else ""): tuple(
                d.get_length() if d.is_static else -1 for d in port.get_partial_shape()
            )
            for port in [*self.compiled.inputs, *self.compiled.outputs]
        }

    def _unload(self) -> None:
        self._request = None
        self.compiled = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # float feeds as float32; an end-to-end graph's uint8 image and int64 valid_hw keep their type
        inputs = {
            name: np.ascontiguousarray(
                arr, dtype=np.float32 if np.issubdtype(arr.dtype, np.floating) else None
            )
            for name, arr in feed.items()
        }
        # share_inputs: the request reads the caller's float32 array in place rather than copying it into
        # its own tensor first (as benchmark_app, which fills its tensors once); the outputs are still
        # copied (share_outputs=False), since the request overwrites them on its next call.
        result = self._request.infer(inputs, share_inputs=True)
        return {name: np.asarray(result[port]) for port, name in self._outputs}


# ----------------------------------------------------------------------------------------------
# the backend record


def engine_path(run_dir: Path, precision: str) -> Path:
    """``openvino/<precision>``: an IR folder (model.xml + model.bin), so its manifest covers both files."""
    return run_dir / "openvino" / precision


def unavailable_reason() -> str | None:
    if OpenVinoRunner.is_available():
        return None
    return "the `openvino` Python package is not installed; install it with `pip install 'edgefpn[openvino]'`"


def _vtuple(v: str) -> tuple[int, ...]:
    out = []
    for part in str(v).split(".")[:3]:
        digits = "".join(ch for ch in part.split("-")[0] if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def target_problem(engine: Mapping[str, Any], probe: Callable[[], tuple] | None = None) -> str | None:
    """An IR runs on an OpenVINO not older (major.minor) than the one that built it. Imports nothing."""
    try:
        have = importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return "openvino is not installed"
    built = (engine.get("target") or {}).get("version")
    if built and _vtuple(have)[:2] < _vtuple(built)[:2]:
        return f"{engine['path']}: IR built with OpenVINO {built}, this device has OpenVINO {have}"
    return None


def build(
    cfg: Any, run_dir: Path, precision: str, src: BuildSource, *, base: BuildSource, force: bool
) -> Any:
    """The OpenVINO engine at ``precision``. For int8 that is the quantize stage's NNCF IR, which
    shares ``openvino/int8`` with this stage's own conversion: taken only while ``quantize.openvino``
    is on and it was made from the current ``model.onnx`` and ``model.int8.onnx`` (else converted over)."""
    from edgefpn.artifacts import atomic_output, require
    from edgefpn.manifests import record
    from edgefpn.pipeline.common import log
    from edgefpn.stages import BUILD_OPENVINO

    nncf = cfg.quantize.openvino
    out = engine_path(run_dir, precision)
    if precision == "int8":
        made = record(out)
        if made is not None and made.stage == "quantize":
            made_from = made.inputs
            if nncf and made_from.get("model") == base.sha256 and made_from.get("int8_qdq") == src.sha256:
                art = require(out, "OpenVINO INT8 IR from the quantize stage")
                log(f"[build] openvino-int8: the quantize stage's NNCF IR {out}")
                return art
            why = (
                "quantize.openvino is off"
                if not nncf
                else f"made from another {base.path.name} / {src.path.name} than the current ones"
            )
            log(f"[build] openvino-int8: the NNCF IR in {out} is stale ({why}); converting {src.path.name}")
    settings = {
        "compress_to_fp16": precision == "fp16",
        "device": "CPU",
        "inference_precision_hint": INFERENCE_PRECISION,
    }
    version = openvino_version()
    hashed = {"target": "openvino", "precision": precision, "openvino": version, **settings}
    chash = BUILD_OPENVINO.config_hash(cfg, settings=hashed)
    inputs = {"onnx": src.sha256}
    if fresh := BUILD_OPENVINO.fresh(out, config_hash=chash, inputs=inputs, force=force):
        log(f"[build] up to date: {out}")
        return fresh
    log(
        f"[build] openvino-{precision}: converting {src.path.name} "
        f"(compress_to_fp16={settings['compress_to_fp16']})"
    )
    with atomic_output(out) as tmp:
        outputs = onnx_to_openvino(
            src.path, tmp / IR_NAME, compress_to_fp16=bool(settings["compress_to_fp16"])
        )
    return BUILD_OPENVINO.record(
        out,
        config_hash=chash,
        inputs=inputs,
        extra=engine_extra(
            "openvino",
            precision,
            src,
            version,
            settings,
            outputs=outputs,
            files=[IR_NAME, Path(IR_NAME).with_suffix(".bin").name],
        ),
    )


def build_e2e(
    cfg: Any, run_dir: Path, precision: str, twins: Mapping[str, Any], *, source: Callable, force: bool
) -> Any:
    """The ``-e2e`` IR: the raw IR with the in-graph head / tail grafted on through OpenVINO's graph API."""
    from edgefpn.pipeline import e2e as e2e_stage
    from edgefpn.pipeline import export as export_stage

    return e2e_stage.make_openvino(cfg, run_dir, precision, export_stage.ARTIFACT, force=force)


BACKEND = Backend(
    name="openvino",
    runner=OpenVinoRunner,
    precisions=("fp32", "fp16", "int8"),
    needs_gpu=False,
    file_kind="OpenVINO IR folder (model.xml + model.bin)",
    engine_path=engine_path,
    unavailable=lambda: unavailable_reason(),
    target_problem=target_problem,
    bundle_target=lambda precision, manifest: {"device": "CPU", "inference_precision": INFERENCE_PRECISION},
    throughput="requests",
    rank=1,
    preferred=("int8", "fp32", "fp16"),
    build=build,
    e2e=build_e2e,
    benchmark_app=True,
)

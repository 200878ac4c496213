"""The TensorRT engine builder (Python API) and the trtexec command that makes the same engine on a
device; ``tensorrt`` is imported inside the functions."""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefpn.artifacts import atomic_write_bytes
from edgefpn.backends.tensorrt import machine
from edgefpn.backends.tensorrt.machine import DeviceInfo
from edgefpn.errors import BackendUnavailable, ExportError

if TYPE_CHECKING:  # the config module needs pyyaml, which a runtime-only install may lack
    from edgefpn.config import TensorRTConfig


# ----------------------------------------------------------------------------------------------
# build settings shared by the Python builder and the trtexec script


def build_flags(precision: str, settings: TensorRTConfig) -> list[str]:
    """The builder flags for ``precision``, as names (recorded in the manifest and the cache key).

    fp16: ``FP16``. int8 from a Q/DQ ONNX is *explicit* quantization: the Q/DQ nodes fix the int8
    regions and their scales, no calibrator is involved. TensorRT 10.x still gates int8 kernels for
    Q/DQ layers in weakly-typed networks behind ``INT8`` (deprecated towards 11, where Q/DQ alone
    suffices), and ``FP16`` lets the unquantized remainder run fp16 (trtexec's ``--int8 --fp16``).
    """
    flags = {"fp16": ["FP16"], "int8": ["INT8", "FP16"]}.get(precision)
    if flags is None:
        raise ValueError(f"TensorRT engines are built at fp16 or int8, got {precision!r}")
    if settings.dla_core is not None:
        flags = [*flags, "GPU_FALLBACK"]
    if settings.version_compatible:
        flags = [*flags, "VERSION_COMPATIBLE"]
    return flags


def timing_cache_key(device: DeviceInfo, trt_version: str, flags: list[str], settings: TensorRTConfig) -> str:
    blob = json.dumps(
        {
            "device": device.name,
            "cc": device.compute_capability,
            "trt": trt_version,
            "flags": sorted(flags),
            "dla": settings.dla_core,
            "hw": settings.hardware_compatible,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def trtexec_command(
    onnx_path: str,
    engine_path: str,
    *,
    precision: str,
    settings: TensorRTConfig,
    timing_cache: str | None = None,
) -> list[str]:
    """The ``trtexec`` command line equivalent to :func:`build_engine` (for building on a Jetson)."""
    cmd = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--memPoolSize=workspace:{settings.workspace_mb}M",
        f"--builderOptimizationLevel={settings.builder_optimization_level}",
    ]
    flags = build_flags(precision, settings)
    cmd += [f"--{f.lower()}" for f in ("FP16", "INT8") if f in flags]
    if settings.dla_core is not None:
        cmd += [f"--useDLACore={settings.dla_core}", "--allowGPUFallback"]
    if settings.hardware_compatible:
        cmd.append("--hardwareCompatibilityLevel=ampere+")
    if settings.version_compatible:
        cmd.append("--versionCompatible")
    if timing_cache is not None:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd


def trtexec_script(cmd: list[str]) -> str:
    """A POSIX shell script running ``cmd`` from the script's own folder (paths in ``cmd`` relative)."""
    return (
        "#!/bin/sh\n# Build this engine on the target device (e.g. a Jetson) with the same settings as\n"
        "# `edgefpn build --target tensorrt`. Paths are relative to this script's folder.\n"
        'set -e\ncd "$(dirname "$0")"\n' + " ".join(shlex.quote(c) for c in cmd) + "\n"
    )


# ----------------------------------------------------------------------------------------------
# builder


@dataclass(frozen=True)
class BuildResult:
    flags: list[str]
    device: DeviceInfo
    version: str
    timing_cache: Path | None

    def manifest(self, settings: TensorRTConfig) -> dict[str, Any]:
        return {
            "version": self.version,
            "device": self.device.name,
            "compute_capability": self.device.compute_capability,
            "cuda": self.device.cuda,
            "flags": self.flags,
            "workspace_mb": settings.workspace_mb,
            "builder_optimization_level": settings.builder_optimization_level,
            "dla_core": settings.dla_core,
            "hardware_compatibility": "ampere_plus" if settings.hardware_compatible else "none",
            "version_compatible": settings.version_compatible,
            "timing_cache": self.timing_cache.name if self.timing_cache else None,
        }


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    precision: str,
    settings: TensorRTConfig,
    cache_dir: Path | None,
    log: Callable[[str], None] = lambda _: None,
) -> BuildResult:
    """Parse ``onnx_path`` and write a serialized engine to ``engine_path`` (plain engine bytes).

    The timing cache, when enabled, is read from and written back to
    ``cache_dir/timing-<key>.cache``, the key covering device, compute capability, TensorRT version
    and flags, so a cache never crosses GPUs or versions.

    Raises:
        BackendUnavailable: tensorrt or a GPU is missing.
        ExportError: the ONNX parser rejected nodes (each named) or the build failed.
    """
    reason = machine.unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"tensorrt: {reason}")
    import tensorrt as trt

    device = machine.cuda_device()
    if device is None:  # unavailable_reason checked it; a GPU lost in between
        raise BackendUnavailable("tensorrt: no CUDA GPU is visible")
    flags = build_flags(precision, settings)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in 10.x
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser rejected it: {_parser_errors(parser)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.builder_optimization_level
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if pinned := keep_e2e_float(network, trt):
        # the end-to-end graph's head, decode and NMS run float32 whatever the network's precision
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        log(f"[build] tensorrt: {pinned} layers of the in-graph head / decode / NMS pinned to float32")
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
    if settings.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS

    cache_path = None
    if settings.timing_cache and cache_dir is not None:
        cache_path = cache_dir / f"timing-{timing_cache_key(device, trt.__version__, flags, settings)}.cache"
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    log(
        f"[build] tensorrt {trt.__version__}: building {precision} on {device.name} "
        f"(sm {device.compute_capability}, flags {'+'.join(flags)})"
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT failed to build a {precision} engine (see the log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(memoryview(serialized))  # the engine bytes as-is: loadable by trtexec --loadEngine
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return BuildResult(flags, device, str(trt.__version__), cache_path)


# ONNX node-name prefixes of edgefpn.e2e's grafted head and tail; TensorRT's parser names each layer
# after the node it comes from.
E2E_PREFIXES = ("e2e/", "e2e_head/")


def keep_e2e_float(network, trt) -> int:
    """Pin every float layer of the grafted e2e head and tail to float32 (``layer.precision`` and its
    float outputs), as issue 15 asks: only the network is reduced precision. Returns how many."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not any(p in layer.name for p in E2E_PREFIXES):
            continue
        floats = [
            j for j in range(layer.num_outputs) if layer.get_output(j).dtype in (trt.float32, trt.float16)
        ]
        if not floats:
            continue  # integer index arithmetic: nothing to pin
        layer.precision = trt.float32
        for j in floats:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def _parser_errors(parser) -> str:
    parts = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() or f"#{err.node()}"
        parts.append(f"node {node} ({err.node_operator()}): {err.desc()}")
    return "; ".join(parts) or "no details"

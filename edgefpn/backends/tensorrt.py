"""TensorRT 10.x: engine builder, trtexec equivalent, and a runner that refuses foreign engines.

``tensorrt`` is imported lazily, inside the functions that need it: this module (and the device-info
helpers, which use torch) imports on any machine. Install: ``pip install tensorrt`` on x86-64 Linux
with an NVIDIA GPU and driver; on Jetson, JetPack's ``python3-libnvinfer`` package.

Engines are the plain bytes of ``build_serialized_network``: no header, loadable by
``trtexec --loadEngine``. What they were built with (TensorRT version, device, compute capability,
flags) lives in the sidecar manifest, and :class:`TensorRTRunner` reads it *before* deserializing:
TensorRT engines are specific to the TensorRT version and GPU architecture that built them.

Device buffers are torch CUDA tensors (torch is already a dependency and owns a CUDA context and
streams); no ``cuda-python`` / ``pycuda``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefpn.artifacts import atomic_write_bytes, read_manifest
from edgefpn.backends.base import Backend, BaseRunner, EngineSpec
from edgefpn.backends.building import BuildSource, engine_record
from edgefpn.errors import BackendUnavailable, ExportError, ModelFileError

if TYPE_CHECKING:  # the config module needs pyyaml, which a runtime-only install may lack
    from edgefpn.config import TensorRTConfig

__all__ = [
    "BACKEND",
    "INSTALL_HINT",
    "BuildResult",
    "DeviceInfo",
    "TensorRTRunner",
    "build_engine",
    "compat_problem",
    "cuda_device",
    "tensorrt_version",
    "timing_cache_key",
    "trtexec_command",
    "unavailable_reason",
]

INSTALL_HINT = (
    "the `tensorrt` Python package is not installed; install it with `pip install tensorrt` on an x86-64 "
    "Linux machine with an NVIDIA GPU and driver, or `sudo apt install python3-libnvinfer` (JetPack) on a Jetson"
)
_DIST_NAMES = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11", "tensorrt-lean")


# ----------------------------------------------------------------------------------------------
# machine info (no tensorrt import)


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "8.7"
    cuda: str | None  # the CUDA runtime torch was built against

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compute_capability": self.compute_capability, "cuda": self.cuda}


def cuda_device(index: int = 0) -> DeviceInfo | None:
    """The CUDA device ``index`` as torch sees it, or None without a usable GPU. Never raises."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(index)
        return DeviceInfo(torch.cuda.get_device_name(index), f"{major}.{minor}", torch.version.cuda)
    except Exception:  # a broken driver or CUDA install must read as "no GPU", not crash the CLI
        return None


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None. Reads package metadata first (no import); JetPack's
    apt package has no pip metadata, so fall back to importing the module."""
    for dist in _DIST_NAMES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    try:
        import tensorrt as trt
    except (ImportError, OSError):
        return None
    return str(trt.__version__)


def unavailable_reason() -> str | None:
    """Why TensorRT cannot build or run here (one line), or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        return INSTALL_HINT
    if cuda_device() is None:
        return "tensorrt is installed but no CUDA GPU is visible (torch.cuda.is_available() is false)"
    return None


def compat_problem(
    manifest: Mapping[str, Any], *, version: str | None, device: DeviceInfo | None
) -> str | None:
    """Why an engine built as ``manifest`` says cannot run on this machine, or None.

    Exact TensorRT version and compute capability must match, unless the engine was built
    version-compatible (same major, this runtime not older) or hardware-compatible Ampere+ (any
    compute capability >= 8.0).
    """
    built = manifest.get("tensorrt")
    if not isinstance(built, Mapping) or "version" not in built or "compute_capability" not in built:
        return "its manifest does not record the TensorRT version and compute capability it was built for"
    b_ver, b_cc = str(built["version"]), str(built["compute_capability"])
    if version is None:
        return f"built with TensorRT {b_ver}, but TensorRT is not installed here"
    if device is None:
        return "no CUDA GPU is visible here"
    if built.get("version_compatible"):
        same_major = version.split(".")[0] == b_ver.split(".")[0]
        if not same_major or _vtuple(version) < _vtuple(b_ver):
            return f"built version-compatible with TensorRT {b_ver}, this machine has TensorRT {version}"
    elif version != b_ver:
        return f"built with TensorRT {b_ver}, this machine has TensorRT {version}"
    if built.get("hardware_compatibility") == "ampere_plus":
        if _vtuple(device.compute_capability) < (8, 0):
            return f"built Ampere+ hardware-compatible, this GPU ({device.name}) is compute capability {device.compute_capability}"
    elif device.compute_capability != b_cc:
        return (
            f"built for compute capability {b_cc} ({built.get('device', '?')}), this GPU ({device.name}) "
            f"is {device.compute_capability}"
        )
    return None


def _vtuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


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
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"tensorrt: {reason}")
    import tensorrt as trt

    device = cuda_device()
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


# ----------------------------------------------------------------------------------------------
# runner


class TensorRTRunner(BaseRunner):
    """Runs a serialized engine on GPU 0 with torch CUDA tensors as I/O buffers (TensorRT 10 tensor API).

    Before deserializing, it reads the engine's manifest and refuses (``ModelFileError``) an engine
    built for another TensorRT version or compute capability (see :func:`compat_problem`).
    """

    requires = ("tensorrt", "torch")
    install = INSTALL_HINT

    def __init__(self, spec: EngineSpec, *, threads: int) -> None:
        super().__init__(spec, threads=threads)  # host threads are irrelevant to TensorRT
        self._engine = None
        self._context = None
        self._stream = None
        self._inputs: dict[str, Any] = {}
        self._outputs: dict[str, Any] = {}

    @classmethod
    def unavailable(cls) -> str | None:
        reason = unavailable_reason()
        return None if reason is None else f"tensorrt: {reason}"

    def _load(self) -> None:
        manifest = read_manifest(self.spec.path)
        if manifest is None:
            raise ModelFileError(
                f"{self.spec.path}: no manifest beside the engine; cannot check it was built for "
                "this TensorRT and GPU (rebuild with edgefpn build --target tensorrt)"
            )
        import tensorrt as trt
        import torch

        # the version of the module that will deserialize, not of whichever pip metadata is around
        problem = compat_problem(manifest, version=str(trt.__version__), device=cuda_device())
        if problem is not None:
            raise ModelFileError(
                f"{self.spec.path}: {problem}; rebuild it here (edgefpn build --target tensorrt "
                "--force) or run its trtexec.sh"
            )

        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        built = manifest["tensorrt"]
        if built.get("version_compatible"):
            runtime.engine_host_code_allowed = True  # the lean runtime embedded in the engine
        if built.get("dla_core") is not None:
            runtime.DLA_core = int(built["dla_core"])
        self._engine = runtime.deserialize_cuda_engine(self.spec.path.read_bytes())
        if self._engine is None:
            raise ModelFileError(
                f"{self.spec.path}: TensorRT could not deserialize the engine (see the log above)"
            )
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = tuple(self._engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelFileError(
                    f"{self.spec.path}: tensor {name} has a dynamic shape {shape}; edgefpn engines are static"
                )
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
            buf = torch.empty(shape, dtype=dtype, device="cuda")
            self._context.set_tensor_address(name, buf.data_ptr())
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs)[name] = buf

    def _io_shapes(self) -> dict[str, tuple]:
        """Every I/O tensor's shape in the deserialized engine (static: checked on load)."""
        return {name: tuple(buf.shape) for name, buf in [*self._inputs.items(), *self._outputs.items()]}

    def _unload(self) -> None:
        self._context = None
        self._engine = None
        self._inputs, self._outputs = {}, {}
        self._stream = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.cuda.stream(self._stream):
            for name, buf in self._inputs.items():
                buf.copy_(
                    torch.from_numpy(np.ascontiguousarray(feed[name])).to(buf.dtype), non_blocking=False
                )
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"{self.spec.path}: TensorRT execution failed")
            # float outputs as float32; an e2e engine's det_labels / num_dets stay integers
            outs = {
                name: (buf.float() if buf.is_floating_point() else buf).cpu()
                for name, buf in self._outputs.items()
            }
        self._stream.synchronize()
        return {name: t.numpy() for name, t in outs.items()}


# ----------------------------------------------------------------------------------------------
# the backend record

TRTEXEC_SCRIPT = "trtexec.sh"


def engine_path(run_dir: Path, precision: str) -> Path:
    return run_dir / "tensorrt" / precision / "model.engine"


def build(
    cfg: Any,
    run_dir: Path,
    precision: str,
    src: BuildSource,
    *,
    force: bool,
    out: Path | None = None,
    **_: Any,
) -> Any:
    """The TensorRT engine at ``precision`` from ``src`` (fp16 from ``model.onnx``, int8 from the Q/DQ
    ``model.int8.onnx``); refused when the TensorRT lint found errors in ``src``."""
    from edgefpn.artifacts import atomic_output, up_to_date, write_manifest
    from edgefpn.config import config_hash
    from edgefpn.lint import errors
    from edgefpn.pipeline.common import log

    errs = errors(src.lint)
    if errs:
        raise ModelFileError(
            f"{src.path}: {len(errs)} TensorRT lint error(s), first: {errs[0]} "
            f"(all: edgefpn trt-lint {src.path})"
        )
    settings = cfg.build.tensorrt
    device = cuda_device()
    version = tensorrt_version()
    if device is None or version is None:
        raise BackendUnavailable(f"tensorrt: {unavailable_reason() or 'not usable here'}")
    out = out or engine_path(run_dir, precision)
    chash = config_hash(settings, {"precision": precision, "device": device.to_dict(), "tensorrt": version})
    inputs = {"onnx": src.sha256}
    if not force and (art := up_to_date(out, config_hash=chash, inputs=inputs)):
        log(f"[build] up to date: {out}")
        return art
    with atomic_output(out) as tmp:
        result = build_engine(
            src.path, tmp, precision=precision, settings=settings, cache_dir=run_dir / "tensorrt", log=log
        )
    info = result.manifest(settings)
    return write_manifest(
        out,
        **engine_record(
            "tensorrt",
            precision,
            src,
            result.version,
            {
                k: info[k]
                for k in (
                    "workspace_mb",
                    "builder_optimization_level",
                    "dla_core",
                    "hardware_compatibility",
                    "version_compatible",
                    "timing_cache",
                )
            },
            config_hash=chash,
            inputs=inputs,
            tensorrt=info,
            device=result.device.to_dict(),
            build_flags=result.flags,
        ),
    )


def build_e2e(
    cfg: Any, run_dir: Path, precision: str, twins: Mapping[str, Any], *, source: Callable, force: bool
) -> Any:
    """The ``-e2e`` engine: built from the e2e ONNX of the same precision (fp16 from the fp32 graph)."""
    twin = twins.get("int8" if precision == "int8" else "fp32")
    if twin is None:
        return None
    out = engine_path(run_dir, precision).parent.with_name(f"{precision}-e2e") / "model.engine"
    return build(cfg, run_dir, precision, source(twin), force=force, out=out)


def write_trtexec(cfg: Any, run_dir: Path, precision: str, src: BuildSource | None) -> Path | None:
    """``tensorrt/<precision>/trtexec.sh``: the same build with trtexec, for on-device builds (written
    whether or not TensorRT is installed here)."""
    import os

    from edgefpn.artifacts import atomic_write_text
    from edgefpn.lint import errors

    if src is None or errors(src.lint):
        return None  # the build would fail; the lint findings are in build.json
    script = engine_path(run_dir, precision).parent / TRTEXEC_SCRIPT
    onnx_rel = os.path.relpath(src.path, script.parent)
    cmd = trtexec_command(
        onnx_rel,
        "model.engine",
        precision=precision,
        settings=cfg.build.tensorrt,
        timing_cache="../timing-trtexec.cache" if cfg.build.tensorrt.timing_cache else None,
    )
    text = trtexec_script(cmd)
    if not script.is_file() or script.read_text(encoding="utf-8") != text:
        atomic_write_text(script, text)
        script.chmod(0o755)
    return script


def target_problem(engine: Mapping[str, Any], probe: Callable[[], tuple] | None = None) -> str | None:
    """The bundled engine's TensorRT version and compute capability against this device's (``probe``:
    ``edgefpn.runtime.device.tensorrt_probe`` unless given)."""
    import importlib.util

    from edgefpn.runtime import device

    path = engine["path"]
    version, gpu = (probe or device.tensorrt_probe)()
    problem = compat_problem(
        {"tensorrt": (engine.get("target") or {}).get("tensorrt")}, version=version, device=gpu
    )
    if problem is not None:
        return f"{path}: {problem}"
    if importlib.util.find_spec("torch") is None:  # TensorRTRunner keeps its CUDA buffers in torch
        return f"{path}: the TensorRT runner needs torch for CUDA buffers, which is not installed"
    return None


BACKEND = Backend(
    name="tensorrt",
    runner=TensorRTRunner,
    precisions=("fp16", "int8"),
    needs_gpu=True,
    file_kind="TensorRT engine (.engine)",
    engine_path=engine_path,
    unavailable=lambda: unavailable_reason(),
    target_problem=target_problem,
    # version, compute capability, compat flags: what the runtime checks before deserializing
    bundle_target=lambda precision, manifest: {"tensorrt": manifest.get("tensorrt")},
    throughput="cuda-streams",
    rank=0,
    preferred=("int8", "fp16"),
    build=build,
    e2e=build_e2e,
    side_files=write_trtexec,
)

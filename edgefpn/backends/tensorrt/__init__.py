"""TensorRT 10.x: engine builder, trtexec equivalent, and a runner that refuses foreign engines.

``tensorrt`` is imported lazily, inside the functions that need it: this module (and the device-info
helpers, which use torch) imports on any machine. Install: ``pip install tensorrt`` on x86-64 Linux
with an NVIDIA GPU and driver; on Jetson, JetPack's ``python3-libnvinfer`` package.

Engines are the plain bytes of ``build_serialized_network``: no header, loadable by
``trtexec --loadEngine``. What they were built with (TensorRT version, device, compute capability,
flags) lives in the sidecar manifest, and :class:`TensorRTRunner` reads it *before* deserializing:
TensorRT engines are specific to the TensorRT version and GPU architecture that built them.

Here the backend record (engine paths, ``build``, the trtexec script beside each engine); the device
checks in ``machine.py``, the builder in ``builder.py``, the runner in ``runner.py``.

Device buffers are torch CUDA tensors (torch is already a dependency and owns a CUDA context and
streams); no ``cuda-python`` / ``pycuda``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgefpn.backends.base import Backend
from edgefpn.backends.building import BuildSource, engine_extra
from edgefpn.backends.tensorrt import machine
from edgefpn.backends.tensorrt.builder import (
    BuildResult,
    build_engine,
    build_flags,
    timing_cache_key,
    trtexec_command,
    trtexec_script,
)
from edgefpn.backends.tensorrt.machine import (
    INSTALL_HINT,
    DeviceInfo,
    compat_problem,
    cuda_device,
    tensorrt_version,
    unavailable_reason,
)
from edgefpn.backends.tensorrt.runner import TensorRTRunner
from edgefpn.errors import BackendUnavailable, ModelFileError

__all__ = [
    "BACKEND",
    "INSTALL_HINT",
    "BuildResult",
    "DeviceInfo",
    "TensorRTRunner",
    "build_engine",
    "build_flags",
    "compat_problem",
    "cuda_device",
    "tensorrt_version",
    "timing_cache_key",
    "trtexec_command",
    "unavailable_reason",
]

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
    from edgefpn.artifacts import atomic_output
    from edgefpn.lint import errors
    from edgefpn.pipeline.common import log
    from edgefpn.stages import BUILD_TENSORRT

    errs = errors(src.lint)
    if errs:
        raise ModelFileError(
            f"{src.path}: {len(errs)} TensorRT lint error(s), first: {errs[0]} "
            f"(all: edgefpn trt-lint {src.path})"
        )
    settings = cfg.build.tensorrt
    device = machine.cuda_device()
    version = machine.tensorrt_version()
    if device is None or version is None:
        raise BackendUnavailable(f"tensorrt: {machine.unavailable_reason() or 'not usable here'}")
    out = out or engine_path(run_dir, precision)
    chash = BUILD_TENSORRT.config_hash(cfg, precision=precision, device=device.to_dict(), version=version)
    inputs = {"onnx": src.sha256}
    if art := BUILD_TENSORRT.fresh(out, config_hash=chash, inputs=inputs, force=force):
        log(f"[build] up to date: {out}")
        return art
    with atomic_output(out) as tmp:
        result = build_engine(
            src.path, tmp, precision=precision, settings=settings, cache_dir=run_dir / "tensorrt", log=log
        )
    info = result.manifest(settings)
    return BUILD_TENSORRT.record(
        out,
        config_hash=chash,
        inputs=inputs,
        extra=engine_extra(
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
    unavailable=lambda: machine.unavailable_reason(),
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

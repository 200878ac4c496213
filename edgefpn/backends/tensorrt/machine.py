"""What TensorRT there is on this machine and which GPU, and whether an engine built elsewhere runs
here. Imports no ``tensorrt`` unless asked for its version where pip metadata is missing."""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INSTALL_HINT = (
    "the `tensorrt` Python package is not installed; install it with `pip install tensorrt` on an x86-64 "
    "Linux machine with an NVIDIA GPU and driver, or `sudo apt install python3-libnvinfer` (JetPack) "
    "on a Jetson"
)
_DIST_NAMES = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11", "tensorrt-lean")


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
            return (
                f"built Ampere+ hardware-compatible, this GPU ({device.name}) is compute capability "
                f"{device.compute_capability}"
            )
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

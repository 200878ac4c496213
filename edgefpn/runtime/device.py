"""What this device can run, probed without torch: TensorRT's version and the GPU's compute capability.

The GPU is read through the CUDA driver API (``libcuda.so.1``) with ctypes, so a TensorRT engine built
for another compute capability is refused on a device that has TensorRT but no PyTorch.
"""

from __future__ import annotations

import ctypes

from edgefpn.backends.tensorrt import DeviceInfo, tensorrt_version

_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}


def cuda_device(index: int = 0) -> DeviceInfo | None:
    """CUDA device ``index`` from the driver API, or None without a driver / GPU. Never raises."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        if cuda.cuInit(0) != 0:
            return None
        dev = ctypes.c_int()
        if cuda.cuDeviceGet(ctypes.byref(dev), index) != 0:
            return None
        major, minor = ctypes.c_int(), ctypes.c_int()
        cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev)
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev)
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGetName(name, 256, dev)
        version = ctypes.c_int()
        cuda.cuDriverGetVersion(ctypes.byref(version))
        v = version.value
        return DeviceInfo(
            name.value.decode(errors="replace"),
            f"{major.value}.{minor.value}",
            f"{v // 1000}.{(v % 1000) // 10}",
        )
    except (OSError, AttributeError):
        return None


def tensorrt_probe() -> tuple[str | None, DeviceInfo | None]:
    """(TensorRT version, GPU 0) on this device; either is None when absent."""
    return tensorrt_version(), cuda_device()


def device_kind() -> str:
    """What kind of device this is, for matching recorded latencies: ``"<arch> <CPU or board model>"``,
    plus ``" + <GPU name>"`` when a CUDA GPU is visible (``"x86_64 AMD EPYC"``,
    ``"aarch64 NVIDIA Jetson Orin Nano Developer Kit + Orin"``). Latencies measured on one kind rank
    engines only on the same kind: an engine's speed order differs between CPUs and GPUs."""
    import platform
    from pathlib import Path

    from edgefpn.runtime.conditions import cpu_model, is_jetson

    root = Path("/")
    board = root / "proc/device-tree/model"
    model = (
        board.read_text(errors="replace").strip("\x00 \n") if is_jetson(root) and board.is_file() else None
    )
    kind = f"{platform.machine()} {model or cpu_model(root) or platform.processor() or 'unknown'}"
    gpu = cuda_device()
    return kind + (f" + {gpu.name}" if gpu is not None else "")

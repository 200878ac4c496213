"""Model compute from the static ONNX graph, and this CPU's theoretical peak to compare it with.

Convention: FLOPs = 2 x MACs, counting multiply-adds only (Conv, ConvTranspose, Gemm, MatMul and
their quantized forms); normalisation, activations, pooling, resizing and element-wise ops are
excluded. This is the convention of most detection papers' "GFLOPs" column (fvcore / thop count
MACs, so their figures are half of ours). Shapes come from ONNX shape inference on the static graph.

Peak. ``cpu_peak`` reads ``/proc/cpuinfo`` and assumes (see :data:`PEAK_ASSUMPTIONS`):

* fp32 FLOP/cycle per core from the widest FMA the CPU has: AVX-512 F on Intel = 2 FMA units x 16
  lanes x 2 = 64 (some Xeon Bronze/Silver parts have one 512-bit unit: 32); AVX-512 on AMD Zen 4
  (family 0x19) = 32, because Zen 4 executes each 512-bit op as two 256-bit halves on its two
  256-bit FMA pipes (same as AVX2); Zen 5 (family >= 0x1A) has a full 512-bit datapath = 64;
  AVX2 + FMA = 2 x 8 x 2 = 32; AVX without FMA = 16; aarch64 NEON (asimd) = 2 x 4 x 2 = 16.
* int8: with VNNI (``avx512_vnni`` / ``avx_vnni``; ``asimddp`` on Arm) one instruction does 4 int8
  multiply-adds per 32-bit lane at FMA throughput, so the int8 peak is 4x the fp32 peak; without
  it, 2x (``vpmaddubsw`` chains).
* cores = min(threads, physical cores): SMT siblings share the FMA units.
* clock = ``cpuinfo_max_freq`` where the kernel exposes it (max turbo, an upper bound, so
  ``fraction_of_peak`` errs low), else the ``cpu MHz`` of /proc/cpuinfo (on VMs, the nominal clock).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CONVENTION", "PEAK_ASSUMPTIONS", "achieved", "count_flops", "cpu_peak"]

CONVENTION = (
    "FLOPs = 2 x MACs, multiply-adds only (Conv, ConvTranspose, Gemm, MatMul); "
    "normalisation, activations, pooling, resize and element-wise ops excluded; per image (batch 1)"
)
PEAK_ASSUMPTIONS = (
    "fp32 FLOP/cycle/core: Intel AVX-512F 64 (2 FMA units), AMD Zen4 AVX-512 32 (double-pumped 256-bit), "
    "Zen5 AVX-512 64, AVX2+FMA 32, AVX 16, aarch64 NEON 16; int8 = 4x fp32 with VNNI/dot-product, else 2x; "
    "cores = min(threads, physical cores); clock = cpuinfo_max_freq if exposed, else /proc/cpuinfo 'cpu MHz'"
)

_MAC_OPS = {
    "Conv",
    "ConvTranspose",
    "QLinearConv",
    "ConvInteger",
    "Gemm",
    "MatMul",
    "QLinearMatMul",
    "MatMulInteger",
}


def count_flops(model: str | Path | Any) -> dict[str, Any]:
    """FLOPs of one forward pass per image, from an ONNX file or ``onnx.ModelProto``.

    Returns:
        ``flops_per_image`` (int), ``gflops_per_image``, ``by_op`` (FLOPs per op type),
        ``batch`` (the graph's static batch, which the totals are divided by) and ``convention``.

    Raises:
        ValueError: a counted node has a shape that shape inference could not make static.
    """
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    shapes: dict[str, list[int]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)

    batch = 1
    initializers = {i.name for i in graph.initializer}
    data_inputs = [i for i in graph.input if i.name not in initializers]
    if data_inputs and shapes.get(data_inputs[0].name):
        batch = max(shapes[data_inputs[0].name][0], 1)

    by_op: dict[str, int] = {}
    for node in graph.node:
        if node.op_type not in _MAC_OPS:
            continue
        macs = _macs(node, shapes)
        by_op[node.op_type] = by_op.get(node.op_type, 0) + 2 * macs
    total = sum(by_op.values()) // batch
    return {
        "flops_per_image": total,
        "gflops_per_image": round(total / 1e9, 4),
        "by_op": {k: v // batch for k, v in sorted(by_op.items())},
        "batch": batch,
        "convention": CONVENTION,
    }


def _shape(shapes: Mapping[str, list[int]], name: str, node: Any) -> list[int]:
    shape = shapes.get(name)
    if shape is None or any(d <= 0 for d in shape):
        raise ValueError(f"{node.op_type} node {node.name!r}: tensor {name!r} has no static shape ({shape})")
    return shape


def _macs(node: Any, shapes: Mapping[str, list[int]]) -> int:
    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        w_name = node.input[3] if op == "QLinearConv" else node.input[1]
        w = _shape(shapes, w_name, node)
        if op == "ConvTranspose":
            # weight [Cin, Cout/g, k...]: every input pixel scatters Cout/g x k MACs
            x = _shape(shapes, node.input[0], node)
            return math.prod(x) * math.prod(w[1:])
        out = _shape(shapes, node.output[0], node)
        # weight [Cout, Cin/g, k...]; out [N, Cout, spatial...]: each output value is Cin/g x k MACs
        return math.prod(out) * math.prod(w[1:])
    a_name, b_name = (
        (node.input[0], node.input[3]) if op == "QLinearMatMul" else (node.input[0], node.input[1])
    )
    a = _shape(shapes, a_name, node)
    out = _shape(shapes, node.output[0], node)
    if op == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return math.prod(out) * k
    _shape(shapes, b_name, node)
    return math.prod(out) * a[-1]  # MatMul: [.., M, K] x [.., K, N] -> [.., M, N]


def _cpuinfo() -> tuple[dict[str, str], set[str], int, float]:
    """(first processor's fields, its flags, physical cores, max 'cpu MHz')."""
    fields: dict[str, str] = {}
    cores: set[tuple[str, str]] = set()
    mhz = 0.0
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for block in text.split("\n\n"):
        current = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                current[key.strip()] = value.strip()
        if not current:
            continue
        if not fields:
            fields = current
        if "core id" in current:
            cores.add((current.get("physical id", "0"), current["core id"]))
        with contextlib.suppress(ValueError):
            mhz = max(mhz, float(current.get("cpu MHz", 0.0)))
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return fields, flags, len(cores) or (os.cpu_count() or 1), mhz


def _max_freq_ghz() -> float | None:
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text().strip()
        return int(khz) / 1e6
    except (OSError, ValueError):
        return None


def fp32_flop_per_cycle(flags: set[str], vendor: str, family: int, machine: str) -> tuple[int, str]:
    """fp32 FLOP per cycle per core, and the reason, from CPU flags (see the module docstring)."""
    if machine in ("aarch64", "arm64"):
        return 16, "aarch64 NEON: 2 x 128-bit FMA pipes"
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family <= 0x19:
            return 32, "AVX-512 on AMD Zen 4: double-pumped on 2 x 256-bit FMA pipes"
        if vendor == "AuthenticAMD":
            return 64, "AVX-512 on AMD Zen 5: 2 x 512-bit FMA pipes"
        return 64, "AVX-512 F: assumed 2 x 512-bit FMA units"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 + FMA: 2 x 256-bit FMA units"
    if "avx" in flags:
        return 16, "AVX without FMA: 256-bit mul + add"
    return 8, "SSE: 128-bit mul + add"


def cpu_peak(threads: int) -> dict[str, Any]:
    """Theoretical fp32 and int8 peak of ``threads`` threads on this CPU (GFLOP/s, GOP/s)."""
    fields, flags, physical, mhz = _cpuinfo()
    vendor = fields.get("vendor_id", "")
    try:
        family = int(fields.get("cpu family", "0"))
    except ValueError:
        family = 0
    per_cycle, why = fp32_flop_per_cycle(flags, vendor, family, platform.machine())
    max_ghz = _max_freq_ghz()
    ghz, clock_source = (max_ghz, "cpuinfo_max_freq") if max_ghz else (mhz / 1e3, "/proc/cpuinfo cpu MHz")
    cores = max(1, min(threads, physical))
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "asimddp"})
    fp32 = cores * ghz * per_cycle
    int8_factor = 4 if vnni else 2
    return {
        "fp32_gflops": round(fp32, 1),
        "int8_gops": round(fp32 * int8_factor, 1),
        "cores": cores,
        "ghz": round(ghz, 3),
        "clock_source": clock_source,
        "fp32_flop_per_cycle_per_core": per_cycle,
        "fp32_basis": why,
        "int8_vnni": vnni,
        "int8_factor": int8_factor,
        "assumptions": PEAK_ASSUMPTIONS,
    }


def achieved(
    gflops_per_image: float, p50_ms: float, precision: str, peak: Mapping[str, Any]
) -> dict[str, Any]:
    """Achieved GFLOP/s at the model-only p50, and its fraction of the fp32 (or, for int8, int8) peak."""
    gflops = gflops_per_image / (p50_ms / 1e3) if p50_ms > 0 else 0.0
    ceiling = peak["int8_gops"] if precision == "int8" else peak["fp32_gflops"]
    return {
        "achieved_gflops": round(gflops, 2),
        "fraction_of_peak": round(gflops / ceiling, 4) if ceiling else None,
        "peak_basis": "int8" if precision == "int8" else "fp32",
    }

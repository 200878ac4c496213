"""What a speed figure ran under: the run's own knobs and the machine state that moves FPS.

Torch-free, stdlib only, so the device runtime can record it. Every machine fact is read from a file
(``/proc``, ``/sys``, ``/etc``, ``/var/lib/nvpmodel``) under ``root``; a fact that cannot be read is
``None``, never guessed. Tests pass a fake ``root``; product code always reads ``/``.

On a Jetson the three things that change FPS by 2-4x for the same engine are the power mode
(``nvpmodel``), whether ``jetson_clocks`` pinned the clocks, and the power drawn; they are recorded
so two figures taken under different modes are never compared blind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_CPU = "sys/devices/system/cpu"
# Input-rail names tegrastats prints for the whole module (Orin, Xavier, Nano/TX2 in that order).
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VDD_IN_SYS")


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(errors="replace").strip("\x00 \n\t")
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _cpus(root: Path) -> list[str]:
    try:
        names = [p.name for p in (root / _CPU).iterdir()]
    except OSError:
        return []
    return sorted((n for n in names if n.startswith("cpu") and n[3:].isdigit()), key=lambda n: int(n[3:]))


def cpu_model(root: Path) -> str | None:
    """``model name`` from /proc/cpuinfo (x86), else the device-tree model (ARM boards, Jetson)."""
    info = _read(root, "proc/cpuinfo") or ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return _read(root, "proc/device-tree/model") or None


def governor(root: Path) -> str | None:
    """The cpufreq governor shared by every CPU, ``"a/b"`` when they differ, None when unreadable."""
    found = {g for c in _cpus(root) if (g := _read(root, f"{_CPU}/{c}/cpufreq/scaling_governor"))}
    return "/".join(sorted(found)) if found else None


def clock_mhz(root: Path) -> dict[str, int | None]:
    """Current (mean over CPUs) and maximum CPU clock in MHz, from cpufreq, else /proc/cpuinfo."""
    cur = [f for c in _cpus(root) if (f := _int(_read(root, f"{_CPU}/{c}/cpufreq/scaling_cur_freq")))]
    top = [f for c in _cpus(root) if (f := _int(_read(root, f"{_CPU}/{c}/cpufreq/cpuinfo_max_freq")))]
    mean = round(sum(cur) / len(cur) / 1000) if cur else None
    if mean is None:  # VMs often have no cpufreq; the kernel still reports the clock it measured
        mhz = [
            line.partition(":")[2]
            for line in (_read(root, "proc/cpuinfo") or "").splitlines()
            if line.startswith("cpu MHz")
        ]
        vals = [float(v) for v in mhz if v.strip().replace(".", "", 1).isdigit()]
        mean = round(sum(vals) / len(vals)) if vals else None
    return {"cpu_mhz": mean, "cpu_max_mhz": round(max(top) / 1000) if top else None}


def is_jetson(root: Path) -> bool:
    """A Jetson (Tegra) board: L4T's release file, or ``nvidia,tegra`` in the device tree."""
    compatible = _read(root, "proc/device-tree/compatible") or ""
    return (root / "etc/nv_tegra_release").is_file() or "nvidia,tegra" in compatible


def nvpmodel_mode(root: Path) -> str | None:
    """The power mode as ``"<id> <NAME>"`` (``"0 MAXN"``), from the file nvpmodel keeps its state in.

    ``/var/lib/nvpmodel/status`` holds ``pmode:0002 fmode:...``; the name comes from the
    ``< POWER_MODEL ID=2 NAME=15W >`` line of ``/etc/nvpmodel.conf`` (just the id when that is absent).
    """
    status = _read(root, "var/lib/nvpmodel/status")
    if not status:
        return None
    mode = next((t.partition(":")[2] for t in status.split() if t.startswith("pmode:")), "")
    if not mode.isdigit():
        return None
    ident = int(mode)
    for line in (_read(root, "etc/nvpmodel.conf") or "").splitlines():
        if "POWER_MODEL" in line and f"ID={ident} " in line.replace(">", " >"):
            name = line.split("NAME=", 1)[1].split()[0].rstrip(">") if "NAME=" in line else ""
            return f"{ident} {name}".strip()
    return str(ident)


def _devfreq_pinned(root: Path) -> bool | None:
    """GPU devfreq min == max (what jetson_clocks sets); None when no GPU devfreq node is readable."""
    try:
        nodes = [
            p
            for p in (root / "sys/class/devfreq").iterdir()
            if "gpu" in p.name or "gv11b" in p.name or "ga10b" in p.name or "gp10b" in p.name
        ]
    except OSError:
        return None
    pinned = []
    for node in nodes:
        lo, hi = (
            _int(_read(root, f"sys/class/devfreq/{node.name}/min_freq")),
            _int(_read(root, f"sys/class/devfreq/{node.name}/max_freq")),
        )
        if lo is not None and hi is not None:
            pinned.append(lo == hi)
    return all(pinned) if pinned else None


def jetson_clocks_on(root: Path) -> bool | None:
    """True when the clocks are pinned as ``jetson_clocks`` pins them: every CPU's scaling_min_freq
    equals its maximum, and the GPU's devfreq min equals its max (where readable). None when the
    cpufreq files cannot be read. (``jetson_clocks --show`` needs root; these files do not.)"""
    pinned = []
    for c in _cpus(root):
        lo = _int(_read(root, f"{_CPU}/{c}/cpufreq/scaling_min_freq"))
        hi = _int(_read(root, f"{_CPU}/{c}/cpufreq/cpuinfo_max_freq")) or _int(
            _read(root, f"{_CPU}/{c}/cpufreq/scaling_max_freq")
        )
        if lo is not None and hi is not None:
            pinned.append(lo == hi)
    if not pinned:
        return None
    gpu = _devfreq_pinned(root)
    return all(pinned) and gpu is not False


def input_power_mw(root: Path) -> int | None:
    """The module's input-rail power in mW, from the INA3221 monitor tegrastats reads (``VDD_IN``).

    JetPack 5/6 expose it as hwmon ``inN_label``/``inN_input`` (mV)/``currN_input`` (mA) under
    ``/sys/bus/i2c/drivers/ina3221``; JetPack 4 as iio ``rail_name_N``/``in_power{N}_input`` (mW)
    under ``ina3221x``. A one-shot reading taken when the conditions are recorded.
    """
    for base in ("sys/bus/i2c/drivers/ina3221", "sys/bus/i2c/drivers/ina3221x"):
        for dev in sorted((root / base).glob("*/hwmon/hwmon*")) + sorted((root / base).glob("*/iio:device*")):
            for n in range(8):
                label = _read(dev, f"in{n}_label") or _read(dev, f"rail_name_{n}")
                if label not in _INPUT_RAILS:
                    continue
                mw = _int(_read(dev, f"in_power{n}_input"))
                if mw is not None:
                    return mw
                mv, ma = _int(_read(dev, f"in{n}_input")), _int(_read(dev, f"curr{n}_input"))
                if mv is not None and ma is not None:
                    return round(mv * ma / 1000)
    return None


def load_average(root: Path) -> float | None:
    """The 1-minute load average: on a shared machine, the other tenants' share of the cores."""
    text = _read(root, "proc/loadavg")
    try:
        return float(text.split()[0]) if text else None
    except ValueError:
        return None


def run_conditions(
    *,
    threads: int | None,
    streams: int | None,
    requests: int | None,
    batch: int | None,
    root: str | Path = "/",
) -> dict[str, Any]:
    """Everything a speed figure ran under: the run's knobs plus the machine state, None when unreadable.

    Args:
        threads: inference threads per engine (None: the backend's default).
        streams: backend streams (OpenVINO ``NUM_STREAMS``, ONNX Runtime sessions, CUDA streams).
        requests: inference requests kept in flight at once.
        batch: images per inference.
        root: filesystem root to read machine facts from (``/``; tests point it at a fake tree).
    """
    base = Path(root)
    jetson = is_jetson(base)
    try:
        usable = len(os.sched_getaffinity(0)) if base == Path("/") else None
    except (AttributeError, OSError):
        usable = None
    return {
        "threads": threads,
        "streams": streams,
        "requests": requests,
        "batch": batch,
        "cpu_model": cpu_model(base),
        "cpus_usable": usable or (len(_cpus(base)) or None),
        "governor": governor(base),
        **clock_mhz(base),
        "load_avg_1m": load_average(base),
        "jetson": jetson,
        "nvpmodel": nvpmodel_mode(base) if jetson else None,
        "jetson_clocks": jetson_clocks_on(base) if jetson else None,
        "power_mw": input_power_mw(base) if jetson else None,
    }


def format_conditions(c: dict[str, Any]) -> str:
    """One line for tables: the knobs first, then the machine facts that were readable."""
    knobs = ", ".join(
        f"{k} {c[k]}" for k in ("threads", "streams", "requests", "batch") if c.get(k) is not None
    )
    facts = [str(c["cpu_model"])] if c.get("cpu_model") else []
    if c.get("cpus_usable"):
        facts.append(f"{c['cpus_usable']} cpus")
    facts.append(f"governor {c.get('governor') or 'n/a'}")
    if c.get("cpu_mhz"):
        facts.append(f"{c['cpu_mhz']} MHz")
    if c.get("load_avg_1m") is not None:
        facts.append(f"load {c['load_avg_1m']:.2f}")
    if c.get("jetson"):
        facts.append(f"nvpmodel {c.get('nvpmodel') or 'n/a'}")
        clocks = c.get("jetson_clocks")
        facts.append("jetson_clocks " + ("n/a" if clocks is None else "on" if clocks else "off"))
        if c.get("power_mw") is not None:
            facts.append(f"{c['power_mw']} mW")
    return f"{knobs}; {', '.join(facts)}"

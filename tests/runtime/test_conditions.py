"""The conditions reader on fake /sys, /proc and Jetson trees (root injected, nothing faked in product
code)."""

from __future__ import annotations

from pathlib import Path

from edgefpn.runtime.conditions import format_conditions, run_conditions


def _w(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _cpu(root: Path, n: int, *, gov: str, cur: int, lo: int, hi: int) -> None:
    base = f"sys/devices/system/cpu/cpu{n}/cpufreq"
    _w(root, f"{base}/scaling_governor", gov + "\n")
    _w(root, f"{base}/scaling_cur_freq", f"{cur}\n")
    _w(root, f"{base}/scaling_min_freq", f"{lo}\n")
    _w(root, f"{base}/cpuinfo_max_freq", f"{hi}\n")


def test_empty_root_gives_none_not_guesses(tmp_path: Path) -> None:
    c = run_conditions(threads=2, streams=1, requests=4, batch=8, root=tmp_path)
    assert (c["threads"], c["streams"], c["requests"], c["batch"]) == (2, 1, 4, 8)
    for key in (
        "cpu_model",
        "governor",
        "cpu_mhz",
        "cpu_max_mhz",
        "load_avg_1m",
        "nvpmodel",
        "jetson_clocks",
        "power_mw",
    ):
        assert c[key] is None, key
    assert c["jetson"] is False
    assert "governor n/a" in format_conditions(c)


def test_x86_vm_without_cpufreq_reads_cpuinfo(tmp_path: Path) -> None:
    _w(
        tmp_path,
        "proc/cpuinfo",
        "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2445.404\n"
        "processor\t: 1\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2454.596\n",
    )
    _w(tmp_path, "proc/loadavg", "2.66 0.93 0.33 3/200 1234\n")
    (tmp_path / "sys/devices/system/cpu/cpu0").mkdir(parents=True)
    c = run_conditions(threads=None, streams=2, requests=2, batch=1, root=tmp_path)
    assert c["cpu_model"] == "AMD EPYC" and c["cpu_mhz"] == 2450 and c["governor"] is None
    assert c["load_avg_1m"] == 2.66 and c["jetson"] is False


def test_jetson_orin_pinned_clocks_mode_and_power(tmp_path: Path) -> None:
    _w(tmp_path, "etc/nv_tegra_release", "# R36 (release), REVISION: 3.0\n")
    _w(tmp_path, "proc/device-tree/model", "NVIDIA Jetson AGX Orin Developer Kit\x00")
    _w(tmp_path, "var/lib/nvpmodel/status", "pmode:0002 fmode:quiet\n")
    _w(
        tmp_path,
        "etc/nvpmodel.conf",
        "< POWER_MODEL ID=0 NAME=MAXN >\nCPU_ONLINE CORE_0 1\n"
        "< POWER_MODEL ID=2 NAME=30W >\nCPU_ONLINE CORE_0 1\n",
    )
    for n in range(2):
        _cpu(tmp_path, n, gov="schedutil", cur=2201600, lo=2201600, hi=2201600)
    _w(tmp_path, "sys/class/devfreq/17000000.gpu/min_freq", "1300500000\n")
    _w(tmp_path, "sys/class/devfreq/17000000.gpu/max_freq", "1300500000\n")
    hw = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    _w(tmp_path, f"{hw}/in1_label", "VDD_GPU_SOC\n")
    _w(tmp_path, f"{hw}/in1_input", "5000\n")
    _w(tmp_path, f"{hw}/curr1_input", "900\n")
    _w(tmp_path, f"{hw}/in2_label", "VDD_IN\n")
    _w(tmp_path, f"{hw}/in2_input", "19200\n")
    _w(tmp_path, f"{hw}/curr2_input", "500\n")
    c = run_conditions(threads=1, streams=2, requests=2, batch=4, root=tmp_path)
    assert c["jetson"] is True and c["cpu_model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert c["nvpmodel"] == "2 30W" and c["jetson_clocks"] is True and c["power_mw"] == 9600
    assert c["governor"] == "schedutil" and c["cpu_mhz"] == 2202 and c["cpu_max_mhz"] == 2202
    line = format_conditions(c)
    assert "nvpmodel 2 30W" in line and "jetson_clocks on" in line and "9600 mW" in line


def test_jetson_clocks_off_when_gpu_or_cpu_floats(tmp_path: Path) -> None:
    _w(tmp_path, "proc/device-tree/compatible", "nvidia,p3768-0000+p3767-0005\x00nvidia,tegra234\x00")
    _w(tmp_path, "var/lib/nvpmodel/status", "pmode:0001\n")  # no nvpmodel.conf: the id alone
    _cpu(tmp_path, 0, gov="schedutil", cur=729600, lo=729600, hi=1510400)
    _cpu(tmp_path, 1, gov="performance", cur=1510400, lo=1510400, hi=1510400)
    # JetPack 4 iio power node
    _w(tmp_path, "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_0", "POM_5V_IN\n")
    _w(tmp_path, "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/in_power0_input", "3120\n")
    c = run_conditions(threads=1, streams=1, requests=1, batch=1, root=tmp_path)
    assert c["jetson"] is True and c["nvpmodel"] == "1" and c["jetson_clocks"] is False
    assert c["governor"] == "performance/schedutil" and c["power_mw"] == 3120

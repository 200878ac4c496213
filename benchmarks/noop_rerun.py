"""Time a no-op `edgefpn run` (every stage up to date) with two checkouts of edgefpn, side by side.

Each checkout runs on its own run directory (and dataset), made beforehand by that same code::

    PYTHONPATH=OLD python -m edgefpn.cli run --config configs/default.yaml --out OLD_RUN \\
        --set data.root=OLD_DATA --set train.epochs=1
    (the same with NEW)
    python benchmarks/noop_rerun.py --old OLD:OLD_RUN:OLD_DATA --new NEW:NEW_RUN:NEW_DATA --rounds 5 \
        --set train.epochs=1

The two are timed in alternation (old, new, old, new, ...) in one session, so a busy minute on a
shared machine falls on both; the figure to compare is the ratio of their medians. Every call must
print no stage doing work (checked: no "[train] fcos", "exporting", "INT8 QDQ mAP", "[check] wrote").
Before timing, each checkout's ``edgefpn`` is imported from its own folder (checked via
``edgefpn.__file__``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORK = (
    "[train] fcos",
    "[export] exporting",
    "INT8 QDQ mAP",
    "[check] wrote",
    "[build] openvino-fp32: converting",
)


def _cmd(src: str, run: str, data: str, sets: list[str], command: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": src}
    cmd = [
        sys.executable,
        "-m",
        "edgefpn.cli",
        command,
        "--config",
        str(Path(src) / "configs" / "default.yaml"),
        "--out",
        run,
        "--set",
        f"data.root={data}",
    ]
    for item in sets:
        cmd += ["--set", item]
    return cmd, env


def _where(src: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import edgefpn; print(edgefpn.__file__)"],
        cwd=src,
        env={**os.environ, "PYTHONPATH": src},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="SRC:RUN_DIR:DATA_ROOT of the old checkout")
    p.add_argument("--new", required=True, help="SRC:RUN_DIR:DATA_ROOT of the new checkout")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--command", default="run", help="the stage command to time (default: run, every stage)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        help="the --set overrides both run dirs were made with (e.g. train.epochs=1); repeatable",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the samples here")
    args = p.parse_args()
    sides = {"old": args.old.split(":"), "new": args.new.split(":")}
    for name, (src, _, _) in sides.items():
        where = _where(src)
        if not where.startswith(str(Path(src).resolve())):
            raise SystemExit(f"{name}: edgefpn imports from {where}, not from {src}")
        print(f"{name}: edgefpn from {where}", flush=True)
    samples: dict[str, list[float]] = {k: [] for k in sides}
    exits: dict[str, set[int]] = {k: set() for k in sides}
    for r in range(args.rounds):
        for name, (src, run, data) in sides.items():
            cmd, env = _cmd(src, run, data, args.sets, args.command)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            busy = [w for w in WORK if w in proc.stderr]
            if busy:
                raise SystemExit(
                    f"{name} round {r}: not a no-op, a stage did work ({busy}):\n{proc.stderr[-2000:]}"
                )
            samples[name].append(dt)
            exits[name].add(proc.returncode)
            print(f"round {r} {name}: {dt:.2f} s (exit {proc.returncode})", flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(
        json.dumps(
            {
                "median_s": med,
                "new_over_old": med["new"] / med["old"],
                "exit_codes": {k: sorted(v) for k, v in exits.items()},
            },
            indent=1,
        )
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"samples_s": samples, "median_s": med, "new_over_old": med["new"] / med["old"]}, indent=1
            )
            + "\n"
        )


if __name__ == "__main__":
    main()

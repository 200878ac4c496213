"""The stages, in order. Each module exposes ``run(cfg, run_dir, *, force, progress)`` and first
brings the stages it depends on up to date, as make would; an up-to-date stage is skipped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgefpn.config import Config


def _stage(module: str) -> Callable[..., object]:
    def run(cfg: Config, run_dir: Path, *, force: bool = False, progress: bool = True) -> object:
        import importlib

        return importlib.import_module(f"edgefpn.pipeline.{module}").run(
            cfg, run_dir, force=force, progress=progress
        )

    run.__name__ = module
    return run


# The ordered pipeline `edgefpn run` executes (data is brought up to date by train).
# Imported lazily so that `edgefpn --help` stays fast and optional backends stay optional.
STAGES: tuple[tuple[str, Callable[..., object]], ...] = (
    ("train", _stage("train")),
    ("export", _stage("export")),
    ("quantize", _stage("quantize")),
    ("build", _stage("build")),
    ("check", _stage("check")),
)


def run_all(cfg: Config, run_dir: Path, *, force: bool = False, progress: bool = True) -> dict[str, float]:
    """Every stage in order; returns (and logs) the wall seconds each took."""
    import time

    from edgefpn.pipeline.common import log

    seconds: dict[str, float] = {}
    try:
        for name, stage in STAGES:
            t0 = time.perf_counter()
            try:
                stage(cfg, run_dir, force=force, progress=progress)
            finally:
                seconds[name] = round(time.perf_counter() - t0, 1)
    finally:
        log("[run] stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    return seconds

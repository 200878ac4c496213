"""The `edgefpn` command line: thin commands that parse, call a stage, print.

One place (:class:`_Group`) turns library errors into a one-line message and an exit code; the
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgefpn.backend_names import BUILD_TARGETS, PREDICT_BACKENDS
from edgefpn.errors import ConfigError, EdgefpnError

_DEBUG = False
# how long a torchrun rank other than 0 waits, on a config error that rank 0 reports, to be stopped
RANK0_GRACE_S = 30.0


class _Group(click.Group):
    """Explicit command order in --help, and the single error choke point."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgefpnError as exc:
            if _DEBUG:
                raise
            if _say_in_this_rank(exc):
                click.echo(f"error: {_rank_prefix()}{exc}", err=True)
            elif isinstance(exc, ConfigError):
                # rank 0 says it. torchrun stops every rank as soon as one exits, so a silent rank that
                # exited first could kill rank 0 before its line is out (seen on a loaded machine):
                # wait, bounded, to be stopped by torchrun when rank 0 has exited
                time.sleep(RANK0_GRACE_S)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if _rank_prefix() in ("", "rank 0: "):
                click.echo(f"{_rank_prefix()}interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except OSError as exc:
            if _DEBUG:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            ctx.exit(2)
        except Exception as exc:
            if _DEBUG:
                raise
            click.echo(
                f"internal error: {_rank_prefix()}{type(exc).__name__}: {exc} "
                "(rerun with --debug for the traceback)",
                err=True,
            )
            ctx.exit(1)


def _rank_prefix() -> str:
    """``"rank R: "`` in a process that torchrun started with several ranks, else nothing."""
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    return f"rank {rank}: " if world.isdigit() and int(world) > 1 else ""


def _say_in_this_rank(exc: EdgefpnError) -> bool:
    """Under torchrun a failed job prints one cause, not one line per rank.

    A config error is the same on every rank (rank 0 says it); a collective that failed because
    another rank died (``PeerLost``) is a consequence (the failing rank says why, or torchrun's summary
    names the rank that was killed). Every other error is this rank's own and is said here.
    """
    if not _rank_prefix():
        return True
    if getattr(exc, "quiet_in_distributed", False):
        return False
    return not (isinstance(exc, ConfigError) and _rank_prefix() != "rank 0: ")


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    # `edgefpn --debug cmd` and `edgefpn cmd --debug` both work; the group's flag is read first in
    # every invocation and resets the state, so one call's --debug never leaks into the next.
    global _DEBUG
    _DEBUG = value if ctx.parent is None else (_DEBUG or value)
    return value


_debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_debug,
    help="Show tracebacks instead of one-line errors.",
)


_MAY_TRAIN = ("train", "run")  # the other commands stop when the run's model is missing or out of date


def stage_options(fn: Callable) -> Callable:
    """--config / --set / --out / --force / --quiet, shared by every stage command."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="YAML config (default: configs/default.yaml if present, else built-in defaults).",
    )
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY.PATH=VALUE",
        help="Override one config value; repeatable (e.g. --set train.epochs=2).",
    )
    @click.option(
        "--out",
        "out",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Run directory for artifacts (default: run.out from the config).",
    )
    @click.option("--force", is_flag=True, help="Redo this stage even if it is up to date.")
    @click.option("--quiet", is_flag=True, help="No progress bars or progress messages.")
    @_debug_option
    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        config_path: Path | None,
        overrides: tuple[str, ...],
        out: Path | None,
        force: bool,
        quiet: bool,
        **kwargs: Any,
    ) -> Any:
        from edgefpn.config import load_config
        from edgefpn.pipeline import common

        # one context per command: --quiet, the lines already said, the datasets already checked
        with common.run_context(common.RunContext(quiet=quiet)):
            if config_path is None and Path("configs/default.yaml").is_file():
                config_path = Path("configs/default.yaml")
            cfg = load_config(config_path, overrides)
            run_dir = common.run_dir(cfg, out)
            call = functools.partial(
                fn,
                *args,
                cfg=cfg,
                run_dir=run_dir,
                force=force,
                progress=not quiet and sys.stderr.isatty(),
                **kwargs,
            )
            command = click.get_current_context().info_name
            if command == "data":  # writes data.root (edgefpn.data.synth guards it), nothing in the run dir
                return call()
            if _rank_prefix() not in ("", "rank 0: "):
                # a torchrun rank other than 0 writes nothing (no lock, no digest cache): rank 0 holds the
                # run directory for the whole job
                return call()
            from edgefpn.digests import persisted
            from edgefpn.runlock import run_lock

            # one command at a time per run directory; only `train` and `run` may start a training run;
            # file digests by stat: a no-op rerun reads no image, no artifact
            with (
                run_lock(run_dir, f"edgefpn {command}", log=common.log),
                common.training_allowed(f"edgefpn {command}", command in _MAY_TRAIN),
                persisted(run_dir),
            ):
                return call()

    return wrapper


def _no_vendor_telemetry() -> None:
    """Keep OpenVINO's converter and NNCF from posting usage statistics.

    Both send to Google Analytics by default, from a process they fork (seen aborting when forked from
    a multi-threaded process). edgefpn reaches no network at run time, so they get the stubs they use
    when the ``openvino_telemetry`` package is absent. ``EDGEFPN_VENDOR_TELEMETRY=1`` leaves it alone.
    """
    if os.environ.get("EDGEFPN_VENDOR_TELEMETRY") != "1" and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import -> ImportError


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_debug_option
@click.version_option(package_name="edgefpn")
def main() -> None:
    """edgefpn: compile FPN detectors for the edge and prove they are still the same detector.

    \b
    Stages (each skips itself when up to date and first brings its inputs up to date):
      data      make / validate the dataset       train     train or load the model
      export    static ONNX, one output per level quantize  INT8 (QDQ, NNCF) and FP16 models
      build     OpenVINO IR, TensorRT engines     check     every engine vs PyTorch, report
      run       all stages in order               predict   detections for a folder of images
      benchmark latency / throughput of every engine   trt-lint  TensorRT compatibility lint of ONNX
    """
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    _no_vendor_telemetry()


@main.group(invoke_without_command=True)
@click.pass_context
@stage_options
def data(ctx: click.Context, cfg, run_dir: Path, force: bool, progress: bool) -> None:
    """Make sure the configured dataset exists (generating the built-in one) and is readable."""
    if ctx.invoked_subcommand is not None:
        return
    from edgefpn.pipeline import data as data_stage

    info = data_stage.run(cfg, force=force, progress=progress)
    for split, digest in info.annotation_hashes.items():
        loaded = info.split(split)
        skipped = f", {len(loaded.skipped)} annotations skipped" if loaded.skipped else ""
        click.echo(
            f"{split}: {len(loaded.images)} images{skipped} ({info.ann_file(split)}, sha256 {digest[:12]})"
        )


@data.command("synth")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write the dataset into (images/, annotations/).",
)
@click.option("--num-train", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--num-val", type=click.IntRange(1), default=200, show_default=True)
@click.option("--num-calib", type=click.IntRange(1), default=300, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@_debug_option
def data_synth(out: Path, num_train: int, num_val: int, num_calib: int, seed: int) -> None:
    """Write the built-in deterministic synthetic COCO dataset."""
    from edgefpn.data.synth import generate

    summary = generate(
        out,
        num_train=num_train,
        num_val=num_val,
        num_calib=num_calib,
        seed=seed,
        show_progress=sys.stderr.isatty(),
    )
    click.echo(f"wrote {out}: {summary}")


@main.command()
@stage_options
def train(cfg, run_dir: Path, force: bool, progress: bool) -> None:
    """Train the detector (or load model.weights) into RUN_DIR/model.pt."""
    from edgefpn.pipeline import train as stage

    art = stage.run(cfg, run_dir, force=force, progress=progress)
    if _rank_prefix() in ("", "rank 0: "):  # under torchrun: said once
        click.echo(art.path)


@main.command()
@stage_options
def export(cfg, run_dir: Path, force: bool, progress: bool) -> None:
    """Export RUN_DIR/model.pt to a static-shape ONNX (cls/box/ctr outputs for p3..p7)."""
    from edgefpn.pipeline import export as stage

    click.echo(stage.run(cfg, run_dir, force=force, progress=progress).path)


@main.command()
@stage_options
def quantize(cfg, run_dir: Path, force: bool, progress: bool) -> None:
    """INT8 QDQ ONNX from calibration images with mAP in the loop, plus FP16 ONNX and OpenVINO INT8."""
    from edgefpn.pipeline import quantize as stage

    art = stage.run(cfg, run_dir, force=force, progress=progress)
    if art is not None:
        click.echo(art.path)


@main.command()
@stage_options
@click.option(
    "--target",
    "targets",
    multiple=True,
    type=click.Choice(BUILD_TARGETS),
    help="Engine target; repeatable (default: build.targets, skipping those missing here).",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(["fp32", "fp16", "int8"]),
    help="Engine precision; repeatable (default: build.precisions).",
)
def build(
    cfg, run_dir: Path, force: bool, progress: bool, targets: tuple[str, ...], precisions: tuple[str, ...]
) -> None:
    """Build the engines of each target (OpenVINO IR, TensorRT, ExecuTorch) from the exported model."""
    from edgefpn.pipeline import build as stage

    for art in stage.run(
        cfg, run_dir, targets=targets or None, precisions=precisions or None, force=force, progress=progress
    ):
        click.echo(art.path)


@main.command("trt-lint")
@click.argument(
    "onnx_files",
    nargs=-1,
    required=True,
    metavar="ONNX...",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@_debug_option
def trt_lint(onnx_files: tuple[Path, ...]) -> None:
    """Check ONNX files for TensorRT 10 compatibility; exit 1 if any error is found.

    Named ``trt-lint``, not ``lint``: ``make lint`` is the code linter (ruff).
    """
    from edgefpn.lint import errors, lint_onnx

    failed = False
    for path in onnx_files:
        findings = lint_onnx(path)
        n_err = len(errors(findings))
        failed = failed or n_err > 0
        click.echo(f"{path}: {n_err} error(s), {len(findings) - n_err} warning(s)")
        for finding in findings:
            click.echo(f"  {finding}")
    if failed:
        raise click.exceptions.Exit(1)


@main.command()
@stage_options
def check(cfg, run_dir: Path, force: bool, progress: bool) -> None:
    """Check every engine against the PyTorch reference; exit non-zero if a gate fails."""
    from edgefpn.pipeline import check as stage

    art = stage.run(cfg, run_dir, force=force, progress=progress)
    click.echo(art.path)
    click.echo((art.path.parent / "report.md").read_text(encoding="utf-8"))


@main.command()
@stage_options
@click.option(
    "--engines",
    "engines",
    multiple=True,
    metavar="NAME",
    help="Engine to package, e.g. openvino-int8; repeatable (default: every checked engine that passed).",
)
def package(cfg, run_dir: Path, force: bool, progress: bool, engines: tuple[str, ...]) -> None:
    """Bundle the checked engines, their ONNX, pre/postprocessing and report into RUN_DIR/bundle.tar."""
    from edgefpn.pipeline import package as stage

    click.echo(stage.run(cfg, run_dir, engines=engines or None, force=force, progress=progress).path)


@main.command()
@stage_options
@click.option(
    "--iters",
    type=click.IntRange(1),
    default=None,
    help="Timed batch-1 calls per engine (default: check.latency_iters).",
)
@click.option(
    "--app-seconds",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Duration of the benchmark_app cross-check per OpenVINO engine (0: skip it).",
)
@click.option(
    "--app-rounds",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Interleaved (ours, benchmark_app) rounds the cross-check time is split into.",
)
@click.option(
    "--throughput-seconds",
    type=click.FloatRange(0.1),
    default=5.0,
    show_default=True,
    help="Duration of each offline sweep point (requests x streams x batch) per engine.",
)
@click.option(
    "--batch",
    "batches",
    default="",
    metavar="N,N,...",
    help="Engine batches to sweep, e.g. 1,2,4,8: batch-N engines are exported and built in "
    "RUN_DIR/batch-N/ (needs PyTorch); default: the run's export.batch only.",
)
@click.option(
    "--stream-frames",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Frames of the streaming scenario's video: whole passes over the val images, at least this many.",
)
def benchmark(
    cfg,
    run_dir: Path,
    force: bool,
    progress: bool,
    iters: int | None,
    app_seconds: float,
    app_rounds: int,
    throughput_seconds: float,
    batches: str,
    stream_frames: int,
) -> None:
    """Named FPS scenarios (single_stream, offline) of every engine in RUN_DIR, with their conditions
    (no PyTorch, no dataset needed unless --batch asks for engines the run does not have)."""
    from edgefpn.pipeline import benchmark as stage

    try:
        sweep = tuple(int(b) for b in batches.split(",") if b.strip())
    except ValueError:
        raise click.BadParameter(
            f"a comma-separated list of integers, got {batches!r}", param_hint="--batch"
        ) from None
    if any(b < 1 for b in sweep):
        raise click.BadParameter(f"every batch must be >= 1, got {batches!r}", param_hint="--batch")
    art = stage.run(
        cfg,
        run_dir,
        force=force,
        progress=progress,
        iters=iters,
        app_seconds=app_seconds,
        app_rounds=app_rounds,
        throughput_seconds=throughput_seconds,
        batches=sweep,
        stream_frames=stream_frames,
    )
    click.echo(art.path)
    click.echo((art.path.parent / "benchmark.md").read_text(encoding="utf-8"))


@main.command("run")
@stage_options
def run_cmd(cfg, run_dir: Path, force: bool, progress: bool) -> None:
    """Run every stage in order (data, train, export, quantize, build, check)."""
    from edgefpn.pipeline import run_all

    run_all(cfg, run_dir, force=force, progress=progress)
    click.echo((run_dir / "report.md").read_text(encoding="utf-8"))


@main.command()
@stage_options
@click.option("--backend", type=click.Choice(PREDICT_BACKENDS), default="onnxruntime", show_default=True)
@click.option("--images", type=click.Path(path_type=Path), required=True, help="Folder of images.")
@click.option(
    "--save",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write detections as a COCO-style JSON list here (default: print to stdout).",
)
def predict(
    cfg, run_dir: Path, force: bool, progress: bool, backend: str, images: Path, save: Path | None
) -> None:
    """Detect objects in every image of a folder; boxes in original image pixels."""
    import json

    from edgefpn.pipeline import predict as stage

    dets = stage.run(cfg, run_dir, backend=backend, images=images, save=save, progress=progress)
    if save is None:
        click.echo(json.dumps(dets, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()

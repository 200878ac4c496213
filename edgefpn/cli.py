"""The `edgefpn` command line: thin commands that parse, call a stage, print.

One place (:class:`edgefpn.cli_support.EdgefpnGroup`) turns library errors into a one-line message and
an exit code; the traceback is shown only with ``--debug``. The options every stage command shares
(:func:`edgefpn.cli_support.stage_options`) live there too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from edgefpn.backend_names import BUILD_TARGETS, PREDICT_BACKENDS
from edgefpn.cli_support import EdgefpnGroup, debug_option, no_vendor_telemetry, rank_prefix, stage_options

__all__ = ["main", "stage_options"]


@click.group(
    cls=EdgefpnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@debug_option
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
    no_vendor_telemetry()


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
@debug_option
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
    if rank_prefix() in ("", "rank 0: "):  # under torchrun: said once
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
@debug_option
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

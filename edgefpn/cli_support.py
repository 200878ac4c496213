"""What every `edgefpn` command shares: the error choke point, --debug, and the stage options.

:class:`EdgefpnGroup` is the one place that turns library errors into a one-line message and an exit
code (the traceback only with ``--debug``), aware of torchrun ranks so that a failed job prints one
cause. :func:`stage_options` gives each stage command its --config / --set / --out / --force / --quiet
and the run context, lock and digest cache it runs in. They live apart from :mod:`edgefpn.cli` so that
the command module holds only command definitions (parse, call a stage, print), and because they change
with the error model and the run-directory rules, not with any one command.
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

from edgefpn.errors import ConfigError, EdgefpnError

__all__ = [
    "RANK0_GRACE_S",
    "EdgefpnGroup",
    "debug_option",
    "no_vendor_telemetry",
    "rank_prefix",
    "stage_options",
]

_DEBUG = False
# how long a torchrun rank other than 0 waits, on a config error that rank 0 reports, to be stopped
RANK0_GRACE_S = 30.0


class EdgefpnGroup(click.Group):
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
                click.echo(f"error: {rank_prefix()}{exc}", err=True)
            elif isinstance(exc, ConfigError):
                # rank 0 says it. torchrun stops every rank as soon as one exits, so a silent rank that
                # exited first could kill rank 0 before its line is out (seen on a loaded machine):
                # wait, bounded, to be stopped by torchrun when rank 0 has exited
                time.sleep(RANK0_GRACE_S)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if rank_prefix() in ("", "rank 0: "):
                click.echo(f"{rank_prefix()}interrupted", err=True)
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
                f"internal error: {rank_prefix()}{type(exc).__name__}: {exc} "
                "(rerun with --debug for the traceback)",
                err=True,
            )
            ctx.exit(1)


def rank_prefix() -> str:
    """``"rank R: "`` in a process that torchrun started with several ranks, else nothing."""
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    return f"rank {rank}: " if world.isdigit() and int(world) > 1 else ""


def _say_in_this_rank(exc: EdgefpnError) -> bool:
    """Under torchrun a failed job prints one cause, not one line per rank.

    A config error is the same on every rank (rank 0 says it); a collective that failed because
    another rank died (``PeerLost``) is a consequence (the failing rank says why, or torchrun's summary
    names the rank that was killed). Every other error is this rank's own and is said here.
    """
    if not rank_prefix():
        return True
    if getattr(exc, "quiet_in_distributed", False):
        return False
    return not (isinstance(exc, ConfigError) and rank_prefix() != "rank 0: ")


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    # `edgefpn --debug cmd` and `edgefpn cmd --debug` both work; the group's flag is read first in
    # every invocation and resets the state, so one call's --debug never leaks into the next.
    global _DEBUG
    _DEBUG = value if ctx.parent is None else (_DEBUG or value)
    return value


debug_option = click.option(
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
    @debug_option
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
            if rank_prefix() not in ("", "rank 0: "):
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


def no_vendor_telemetry() -> None:
    """Keep OpenVINO's converter and NNCF from posting usage statistics.

    Both send to Google Analytics by default, from a process they fork (seen aborting when forked from
    a multi-threaded process). edgefpn reaches no network at run time, so they get the stubs they use
    when the ``openvino_telemetry`` package is absent. ``EDGEFPN_VENDOR_TELEMETRY=1`` leaves it alone.
    """
    if os.environ.get("EDGEFPN_VENDOR_TELEMETRY") != "1" and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import -> ImportError

"""Small helpers shared by the stages: run directories, logging, seeds."""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.config import Config
from edgefpn.inference import PrePost
from edgefpn.postprocess import PostprocessParams, decoder_for


@dataclass
class RunContext:
    """What one command remembers while its stages run, instead of module globals.

    The CLI makes one per command (:func:`run_context`); code called without one (tests, a library
    user) shares a default context for the process, as the module globals were shared before.
    """

    quiet: bool = False  # --quiet, and torchrun ranks other than 0 (one log, rank 0's)
    said: set[str] = field(default_factory=set)  # "up to date" lines already printed
    datasets: dict[Any, Any] = field(default_factory=dict)  # (data.root, settings) -> DatasetInfo checked
    reported: set[Any] = field(default_factory=set)  # (annotation file, sha256) whose skips were said


_DEFAULT_CONTEXT = RunContext()
_CONTEXT: ContextVar[RunContext | None] = ContextVar("edgefpn_run_context", default=None)


def current_context() -> RunContext:
    """The context of the command running (a process-wide default outside :func:`run_context`)."""
    return _CONTEXT.get() or _DEFAULT_CONTEXT


@contextlib.contextmanager
def run_context(ctx: RunContext) -> Iterator[RunContext]:
    """Within the body, the stages log and cache through ``ctx``."""
    token = _CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _CONTEXT.reset(token)


def log(message: str) -> None:
    """Progress messages go to stderr so that stdout stays machine-readable.

    Stages bring their inputs up to date, so "up to date" lines would repeat once per dependent
    stage; each is said once per command (:class:`RunContext`).
    """
    ctx = current_context()
    if ctx.quiet or (message in ctx.said and "up to date" in message):
        return
    ctx.said.add(message)
    print(message, file=sys.stderr, flush=True)


# Which command may not train (None: training allowed). Stages bring their inputs up to date, so
# `edgefpn predict` reaches the train stage through export; only `edgefpn train` and `edgefpn run` may
# start a training run there (a quiet retrain replaced a user's 8-epoch model with a 1-epoch one).
# A context variable rather than a parameter of every stage: the CLI sets it once per command.
_NO_TRAINING: ContextVar[str | None] = ContextVar("edgefpn_no_training", default=None)


@contextlib.contextmanager
def training_allowed(command: str, allowed: bool) -> Iterator[None]:
    """Within the body, the train stage trains only if ``allowed``; else it names ``command`` and stops."""
    token = _NO_TRAINING.set(None if allowed else command)
    try:
        yield
    finally:
        _NO_TRAINING.reset(token)


def training_refused_by() -> str | None:
    """The command that may not train (see :func:`training_allowed`), or None when training is allowed."""
    return _NO_TRAINING.get()


def run_dir(cfg: Config, out: str | Path | None = None) -> Path:
    # not created here: the first artifact written creates it, so a failed command leaves no folder
    return Path(out) if out is not None else Path(cfg.run.out)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def recorded_arch(cfg: Config, run_dir: Path) -> str:
    """The arch recorded in the run's ``model.pt`` manifest (``cfg.model.arch`` before one exists).

    The decoder follows the model that produced the tensors, not the config that is asking.
    """
    from edgefpn.manifests import model_meta

    return str(model_meta(run_dir).arch or cfg.model.arch)


def postprocess_params(cfg: Config, arch: str | None = None, *, deploy: bool = False) -> PostprocessParams:
    """The config's thresholds with the pyramid levels of ``arch``'s decoder (``cfg.model.arch`` by default).

    ``deploy=True``: the score threshold of deployed detections (``deploy.score_thresh``), not the
    evaluation one.
    """
    pp = cfg.postprocess
    decoder = decoder_for(arch or cfg.model.arch)
    return PostprocessParams(
        score_thresh=deploy_score_thresh(cfg) if deploy else pp.score_thresh,
        nms_thresh=pp.nms_thresh,
        topk_candidates=pp.topk_candidates,
        detections_per_img=pp.detections_per_img,
        strides=decoder.strides,
        levels=decoder.levels,
    )


def deploy_score_thresh(cfg: Config) -> float:
    """``deploy.score_thresh``, or the evaluation threshold where the config sets none."""
    t = cfg.deploy.score_thresh
    return cfg.postprocess.score_thresh if t is None else t


def make_prepost(cfg: Config, *, arch: str | None = None, deploy: bool = False) -> PrePost:
    """Preprocessing of ``cfg.model`` and the decoder of ``arch`` (``cfg.model.arch`` by default);
    ``deploy=True`` decodes at the deployment score threshold (see :func:`postprocess_params`)."""
    m = cfg.model
    arch = arch or m.arch
    post = postprocess_params(cfg, arch, deploy=deploy)
    return PrePost(input_size=m.input_size, mean=m.mean, std=m.std, post=post, arch=arch)

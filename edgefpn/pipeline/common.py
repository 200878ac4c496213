"""Small helpers shared by the stages: run directories, logging, seeds."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

from edgefpn.config import Config
from edgefpn.inference import Pipeline
from edgefpn.postprocess import PostprocessParams

QUIET = False


_SAID: set[str] = set()


def log(message: str) -> None:
    """Progress messages go to stderr so that stdout stays machine-readable.

    Stages bring their inputs up to date, so "up to date" lines would repeat once per dependent
    stage; each is said once per process.
    """
    if QUIET or (message in _SAID and "up to date" in message):
        return
    _SAID.add(message)
    print(message, file=sys.stderr, flush=True)


def run_dir(cfg: Config, out: str | Path | None = None) -> Path:
    # not created here: the first artifact written creates it, so a failed command leaves no folder
    return Path(out) if out is not None else Path(cfg.run.out)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def postprocess_params(cfg: Config) -> PostprocessParams:
    pp = cfg.postprocess
    return PostprocessParams(
        score_thresh=pp.score_thresh,
        nms_thresh=pp.nms_thresh,
        topk_candidates=pp.topk_candidates,
        detections_per_img=pp.detections_per_img,
    )


def make_pipeline(cfg: Config) -> Pipeline:
    m = cfg.model
    return Pipeline(input_size=m.input_size, mean=m.mean, std=m.std, post=postprocess_params(cfg))

"""`predict`: detections for a folder of images with one backend, in original image pixels."""

from __future__ import annotations

import json
from pathlib import Path

from edgefpn.artifacts import atomic_write_text
from edgefpn.backends import EngineSpec, open_runner
from edgefpn.backends import backend as backend_record
from edgefpn.config import Config
from edgefpn.inference import detect_file
from edgefpn.manifests import model_meta
from edgefpn.ownership import check_detections_file
from edgefpn.pipeline import export as export_stage
from edgefpn.pipeline import train as train_stage
from edgefpn.pipeline.common import log, make_prepost
from edgefpn.runtime import detections_to_records, list_images


def run(
    cfg: Config, run_dir: Path, *, backend: str, images: Path, save: Path | None, progress: bool = True
) -> list[dict]:
    from tqdm import tqdm

    if save is not None:  # before any work: --save replaces only a detections file edgefpn wrote
        check_detections_file(save, "--save")
    paths = list_images(images)  # names what it skips on stderr, --quiet or not
    # an ONNX runtime runs the exported model.onnx; the reference (torch) the trained model.pt itself
    stage = export_stage if backend_record(backend).reads_onnx else train_stage
    art = stage.run(cfg, run_dir, progress=progress)
    meta = model_meta(run_dir)
    # category ids: the dataset's when trained here, else the model's label index (torchvision style)
    category_ids = meta.category_ids or list(range(meta.num_classes))
    pipe = make_prepost(cfg, arch=meta.arch or cfg.model.arch, deploy=True)
    dets_out: list[dict] = []
    with open_runner(
        EngineSpec(f"{backend}-fp32", backend, "fp32", art.path), threads=cfg.run.threads
    ) as runner:
        for path in tqdm(paths, desc=f"[predict] {backend}", disable=not progress, leave=False):
            dets_out.extend(detections_to_records(detect_file(runner, pipe, path), path.name, category_ids))
    if save is not None:
        check_detections_file(save, "--save")  # again: something may have appeared there meanwhile
        atomic_write_text(save, json.dumps(dets_out, indent=1) + "\n")
        log(f"[predict] {len(dets_out)} detections on {len(paths)} images -> {save}")
    return dets_out

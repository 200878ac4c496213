"""COCO box mAP through pycocotools (the third depth of ``check``, and validation during training)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgefpn.errors import DataError
from edgefpn.postprocess import Detections

__all__ = ["COCO_STATS", "coco_map", "detections_to_coco"]

# Names for the first six entries of COCOeval.stats (bbox), in order.
COCO_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large")


def detections_to_coco(dets: Detections, image_id: int, category_ids: Sequence[int]) -> list[dict]:
    """COCO result dicts for one image; ``dets.boxes`` must already be in original image pixels.

    Label ``i`` becomes ``category_ids[i]``; boxes become ``[x, y, w, h]`` at full float precision.
    """
    labels = np.asarray(dets.labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(category_ids)):
        raise ValueError(
            f"labels must be in [0, {len(category_ids)}) to index category_ids, got "
            f"{labels.min()}..{labels.max()}"
        )
    boxes = np.asarray(dets.boxes, dtype=np.float64)  # [K, 4] xyxy
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # [K, 4]
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[label]),
            "bbox": [float(v) for v in box],
            "score": float(score),
        }
        for box, score, label in zip(
            xywh, np.asarray(dets.scores, dtype=np.float64), labels.tolist(), strict=True
        )
    ]


def coco_map(gt_ann_file: Path, results: list[dict], *, image_ids: Sequence[int] | None = None) -> dict:
    """Box AP of ``results`` against a COCO annotation file, with COCOeval's printing silenced.

    Args:
        gt_ann_file: COCO-format ground truth.
        results: COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
        image_ids: evaluate only these images (default: every image in ``gt_ann_file``).

    Returns:
        ``map``, ``map50``, ``map75``, ``map_small``, ``map_medium``, ``map_large`` in points (0-100), and
        ``per_class: {class name: AP}`` for the classes that have ground truth in the evaluated images.
        A value is -1.0 where COCOeval has no ground truth to score (e.g. ``map_large`` without large
        objects). Empty ``results`` give 0.0 for every defined value.
    """
    from pycocotools.coco import COCO  # lazy: pycocotools imports matplotlib
    from pycocotools.cocoeval import COCOeval

    gt = _load_gt(Path(gt_ann_file), COCO)
    gt_images = set(gt.getImgIds())
    if image_ids is not None:
        image_ids = [int(i) for i in image_ids]
        unknown = sorted(set(image_ids) - gt_images)
        if not image_ids or unknown:
            raise ValueError(
                f"image_ids must be non-empty ids of {gt_ann_file}, got unknown ids {unknown[:10]}"
            )
    eval_images = sorted(gt_images) if image_ids is None else image_ids
    if not eval_images or not gt.getCatIds():
        raise DataError(f"{gt_ann_file}: no images or no categories to evaluate")

    dets = [_copy_result(r) for r in results]  # loadRes adds keys to the dicts it is given
    unknown = sorted({d["image_id"] for d in dets} - gt_images)
    if unknown:
        raise ValueError(f"results name images that are not in {gt_ann_file}: {unknown[:10]}")
    if not dets:
        # loadRes cannot take an empty list. One detection outside every image is a false positive that
        # scores every defined AP as 0 while keeping COCOeval's -1 for undefined ones.
        dets = [
            {
                "image_id": eval_images[0],
                "category_id": gt.getCatIds()[0],
                "bbox": [-10.0, -10.0, 1.0, 1.0],
                "score": 1e-6,
            }
        ]

    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = eval_images
        ev.evaluate()
        ev.accumulate()
        ev.summarize()

    out: dict = {name: _points(v) for name, v in zip(COCO_STATS, ev.stats[: len(COCO_STATS)], strict=True)}
    precision = ev.eval["precision"]  # [T iou, R recall, K class, A area, M max dets]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]  # area "all", maxDets 100
        if (p > -1).any():
            per_class[gt.cats[int(cat_id)]["name"]] = _points(p[p > -1].mean())
    out["per_class"] = per_class
    return out


def _points(ap: float) -> float:
    """COCOeval's AP in [0, 1] (or -1: undefined) -> points in [0, 100] (or -1.0)."""
    ap = float(ap)
    return -1.0 if ap < 0 else 100.0 * ap


def _load_gt(path: Path, coco_cls):
    if not path.is_file():
        raise DataError(f"{path}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = coco_cls(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a COCO annotation file ({type(exc).__name__}: {exc})") from exc
    for ann in gt.dataset.get("annotations", []):  # COCOeval needs both; hand-made files may omit them
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return gt


def _copy_result(r: dict) -> dict:
    try:
        x, y, w, h = (float(v) for v in r["bbox"])
        return {
            "image_id": int(r["image_id"]),
            "category_id": int(r["category_id"]),
            "bbox": [x, y, w, h],
            "score": float(r["score"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"expected a COCO result {{image_id, category_id, bbox: [x, y, w, h], score}}, got {r!r}"
        ) from exc

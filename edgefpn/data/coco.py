"""Load and validate one split of a COCO-format dataset folder (numpy only, no torch).

Layout::

    root/annotations/instances_<split>.json
    root/images/<file_name>

Structural problems (missing files or keys, wrong types, unsafe paths) raise :class:`DataError`;
individual bad annotations (non-finite or empty boxes, unknown categories, crowd regions) are
skipped and reported in :attr:`CocoSplit.skipped`, one entry per annotation. Image files are not
opened by :func:`load_split`; :func:`check_image_sizes` compares their headers with ``width`` / ``height``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TypeGuard

import numpy as np

from edgefpn.errors import DataError

__all__ = ["MAX_ANNOTATIONS_PER_IMAGE", "CocoSplit", "ImageRecord", "check_image_sizes", "load_split"]

MAX_ANNOTATIONS_PER_IMAGE = 10_000
_SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One image and its usable annotations.

    ``boxes`` is ``float32 [K, 4]`` xyxy in original (stored) pixels; ``labels`` is ``int64 [K]``
    contiguous ``0..C-1`` (``CocoSplit.category_ids[label]`` is the COCO category id).
    """

    id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True, eq=False)
class CocoSplit:
    """A loaded split. Label ``i`` means category ``category_ids[i]`` named ``class_names[i]``."""

    root: Path
    split: str
    ann_file: Path
    images: tuple[ImageRecord, ...]
    category_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)


def _is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def load_split(root: str | Path, split: str) -> CocoSplit:
    """Read ``root/annotations/instances_<split>.json`` (images under ``root/images/``).

    Raises:
        DataError: ``"<file>: <problem>"`` for a missing folder or file, malformed JSON, missing
            keys or wrong types, a ``file_name`` outside ``root/images``, or more than
            ``MAX_ANNOTATIONS_PER_IMAGE`` annotations on one image.
    """
    if not isinstance(split, str) or not _SPLIT_RE.match(split):
        raise ValueError(f"split must be a simple name like 'train' or 'val', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise DataError(f"{ann_file}: annotations file not found")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: images folder not found")

    try:
        with ann_file.open("rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{ann_file}: malformed JSON ({e})") from None
    except OSError as e:
        raise DataError(f"{ann_file}: cannot read ({e.strerror or e})") from None

    def fail(problem: str) -> DataError:
        return DataError(f"{ann_file}: {problem}")

    if not isinstance(data, dict):
        raise fail(f"top level must be an object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise fail(f"missing key '{key}'")
        if not isinstance(data[key], list):
            raise fail(f"'{key}' must be a list, got {type(data[key]).__name__}")

    category_ids, class_names = _parse_categories(data["categories"], fail)
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    images = _parse_images(data["images"], images_dir, fail)

    # image id -> (boxes, labels, annotation ids)
    per_image: dict[int, tuple[list[list[float]], list[int], list[int]]] = {
        img["id"]: ([], [], []) for img in images
    }
    skipped: list[str] = []
    counts: Counter[int] = Counter()
    for i, ann in enumerate(data["annotations"]):
        parsed = _parse_annotation(i, ann, fail)
        ann_id, image_id, category_id, bbox, iscrowd = parsed
        where = f"annotation {ann_id} (image {image_id})"
        counts[image_id] += 1
        if counts[image_id] > MAX_ANNOTATIONS_PER_IMAGE:
            raise fail(f"image {image_id} has more than {MAX_ANNOTATIONS_PER_IMAGE} annotations")
        if image_id not in per_image:
            skipped.append(f"{where}: unknown image_id")
            continue
        if iscrowd:
            skipped.append(f"{where}: iscrowd=1")
            continue
        if category_id not in label_of:
            skipped.append(f"{where}: unknown category_id {category_id}")
            continue
        x, y, w, h = bbox
        if not all(math.isfinite(v) for v in bbox):
            skipped.append(f"{where}: non-finite bbox {bbox}")
            continue
        if w <= 0 or h <= 0:
            skipped.append(f"{where}: bbox with non-positive width or height {bbox}")
            continue
        boxes, labels, ann_ids = per_image[image_id]
        boxes.append([x, y, x + w, y + h])
        labels.append(label_of[category_id])
        ann_ids.append(ann_id)

    records = []
    for img in images:
        boxes, labels, ann_ids = per_image[img["id"]]
        box_arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        # Clip to the image (COCO boxes may stick out by a fraction of a pixel), then drop empties.
        np.clip(box_arr[:, 0::2], 0, img["width"], out=box_arr[:, 0::2])
        np.clip(box_arr[:, 1::2], 0, img["height"], out=box_arr[:, 1::2])
        keep = (box_arr[:, 2] > box_arr[:, 0]) & (box_arr[:, 3] > box_arr[:, 1])
        # one entry per dropped annotation: len(skipped) is the number of annotations not used
        skipped.extend(
            f"annotation {ann_ids[i]} (image {img['id']}): bbox outside the image "
            f"({img['width']}x{img['height']})"
            for i in np.flatnonzero(~keep)
        )
        records.append(
            ImageRecord(
                id=img["id"],
                file_name=img["file_name"],
                path=img["path"],
                width=img["width"],
                height=img["height"],
                boxes=box_arr[keep],
                labels=np.asarray(labels, dtype=np.int64).reshape(-1)[keep],
            )
        )
    return CocoSplit(
        root=root,
        split=split,
        ann_file=ann_file,
        images=tuple(records),
        category_ids=category_ids,
        class_names=class_names,
        skipped=tuple(skipped),
    )


def _parse_categories(cats: list[Any], fail: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
    by_id: dict[int, str] = {}
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict):
            raise fail(f"categories[{i}] must be an object, got {type(cat).__name__}")
        cid, name = cat.get("id"), cat.get("name")
        if not _is_int(cid):
            raise fail(f"categories[{i}].id must be an integer, got {cid!r}")
        if not isinstance(name, str):
            raise fail(f"categories[{i}].name must be a string, got {name!r}")
        if cid in by_id:
            raise fail(f"duplicate category id {cid}")
        by_id[cid] = name
    if not by_id:
        raise fail("no categories")
    ids = tuple(sorted(by_id))
    return ids, tuple(by_id[cid] for cid in ids)


def _safe_image_path(file_name: str, images_dir: Path, images_real: Path) -> Path | None:
    """``images_dir / file_name`` if it stays inside ``images_dir`` (symlinks resolved), else None."""
    if not file_name or "\x00" in file_name or "\\" in file_name:
        return None
    pure = PurePosixPath(file_name)
    if pure.is_absolute() or PureWindowsPath(file_name).drive or ".." in pure.parts:
        return None
    path = images_dir / pure
    if not path.resolve().is_relative_to(images_real):
        return None
    return path


def _require_keys(item: Any, where: str, keys: tuple[str, ...], fail: Any) -> None:
    if not isinstance(item, dict):
        raise fail(f"{where} must be an object, got {type(item).__name__}")
    for key in keys:
        if key not in item:
            raise fail(f"{where} is missing key '{key}'")


def _parse_images(items: list[Any], images_dir: Path, fail: Any) -> list[dict[str, Any]]:
    images_real = images_dir.resolve()
    seen: set[int] = set()
    out = []
    for i, img in enumerate(items):
        _require_keys(img, f"images[{i}]", ("id", "file_name", "width", "height"), fail)
        image_id, file_name, width, height = img["id"], img["file_name"], img["width"], img["height"]
        if not _is_int(image_id):
            raise fail(f"images[{i}].id must be an integer, got {image_id!r}")
        if image_id in seen:
            raise fail(f"duplicate image id {image_id}")
        seen.add(image_id)
        if not isinstance(file_name, str):
            raise fail(f"images[{i}].file_name must be a string, got {file_name!r}")
        for key, v in (("width", width), ("height", height)):
            if not _is_int(v) or v <= 0:
                raise fail(f"images[{i}].{key} must be a positive integer, got {v!r}")
        path = _safe_image_path(file_name, images_dir, images_real)
        if path is None:
            raise fail(f"images[{i}].file_name {file_name!r} is not a relative path inside {images_dir}")
        out.append({"id": image_id, "file_name": file_name, "path": path, "width": width, "height": height})
    return out


def _parse_annotation(i: int, ann: Any, fail: Any) -> tuple[int, int, int, list[float], bool]:
    _require_keys(ann, f"annotations[{i}]", ("id", "image_id", "category_id", "bbox"), fail)
    ann_id, image_id, category_id, bbox = ann["id"], ann["image_id"], ann["category_id"], ann["bbox"]
    for key, v in (("id", ann_id), ("image_id", image_id), ("category_id", category_id)):
        if not _is_int(v):
            raise fail(f"annotations[{i}].{key} must be an integer, got {v!r}")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise fail(f"annotations[{i}].bbox must be a list of 4 numbers [x, y, w, h], got {bbox!r}")
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1) or isinstance(iscrowd, float):
        raise fail(f"annotations[{i}].iscrowd must be 0 or 1, got {iscrowd!r}")
    return ann_id, image_id, category_id, [float(v) for v in bbox], bool(iscrowd)


def check_image_sizes(split: CocoSplit, size_of: Callable[[Path], tuple[int, int]]) -> None:
    """Refuse a split whose ``width`` / ``height`` disagree with an image's real size.

    Boxes are clipped to the recorded size and mapped back through the real one, so a wrong size
    silently clips or drops most of an image's boxes. ``size_of(path)`` reads ``(width, height)``
    from the image header (:func:`edgefpn.data.preprocess.image_size`, cached by the caller).

    Raises:
        DataError: ``"<image>: ..."`` for the first image whose size disagrees (or cannot be read).
    """
    for rec in split.images:
        w, h = size_of(rec.path)
        if (w, h) != (rec.width, rec.height):
            raise DataError(
                f"{rec.path}: image is {w}x{h} pixels but {split.ann_file} records "
                f"width x height {rec.width}x{rec.height} (image id {rec.id}); fix the annotation file"
            )

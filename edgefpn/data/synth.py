"""The built-in synthetic detection dataset: textured shapes on cluttered backgrounds, in COCO format.

Classes differ by *shape* only: every object gets a random colour and texture, and backgrounds carry
distractor fragments (lines, bars, arcs, irregular blobs) that belong to no class. Object sizes are
log-uniform from ``MIN_OBJECT`` pixels to ``MAX_OBJECT_FRAC`` of the shorter image side, so every FPN
level P3..P7 gets work. Objects may overlap; an annotation is dropped only when less than
``MIN_VISIBLE`` of its pixels stay visible. Boxes are the exact pixel extent of the full shape.
The drawing lives in :mod:`edgefpn.data.synth_render`; this module writes the dataset folder.

Everything is seeded: each image draws from its own ``numpy`` generator seeded with
``(seed, split, index)``, so splits never share a stream and the same call writes byte-identical
files (on the same machine and library versions).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from edgefpn.artifacts import sha256_file, sha256_path
from edgefpn.data.synth_render import CLASS_NAMES, render
from edgefpn.errors import DataError
from edgefpn.manifests import recorded_sha256
from edgefpn.ownership import check_replaceable

__all__ = ["CLASS_NAMES", "SPLITS", "generate"]

SPLITS: tuple[str, ...] = ("train", "val", "calib")

_MARKER = ".edgefpn-synth.json"
_FORMAT_VERSION = 1
_JPEG_ARGS: dict[str, Any] = {"format": "JPEG", "quality": 92, "subsampling": 0, "optimize": False}
_JSON_ARGS: dict[str, Any] = {"sort_keys": True, "separators": (",", ":")}


def generate(
    out: Path,
    *,
    num_train: int,
    num_val: int,
    num_calib: int,
    seed: int = 0,
    min_side: int = 224,
    max_side: int = 384,
    show_progress: bool = True,
    option: str = "--out",
    advice: str = "",
) -> dict:
    """Write the synthetic dataset to ``out`` (``images/`` + ``annotations/instances_<split>.json``).

    The folder is built next to ``out`` and renamed into place. An existing ``out`` is replaced only
    if it is empty or a previous output of this function that nobody changed: its marker records
    every file's sha256, and a file edited or added since (a user's copy, grown into their own
    dataset) keeps the folder from being replaced. ``option`` names what chose ``out`` and ``advice``
    says what else to do, for that error.

    Returns:
        ``{"root", "seed", "class_names", "splits": {split: {"images", "annotations"}}}``.

    Raises:
        DataError: ``out`` exists and is not a previous synthetic dataset.
    """
    counts = {"train": num_train, "val": num_val, "calib": num_calib}
    for name, n in counts.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"num_{name} must be a non-negative integer, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(min_side, int) and isinstance(max_side, int) and 32 <= min_side <= max_side <= 4096):
        raise ValueError(
            f"need 32 <= min_side <= max_side <= 4096 (integers), got min_side={min_side!r}, "
            f"max_side={max_side!r}"
        )

    out = Path(out)
    _check_replaceable(out, option, advice)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "annotations").mkdir()
        summary_splits: dict[str, dict[str, int]] = {}
        with tqdm(total=sum(counts.values()), desc="synth", unit="img", disable=not show_progress) as bar:
            for split_index, split in enumerate(SPLITS):
                coco = _generate_split(tmp, split, split_index, counts[split], seed, min_side, max_side, bar)
                _write_json(tmp / "annotations" / f"instances_{split}.json", coco)
                summary_splits[split] = {
                    "images": len(coco["images"]),
                    "annotations": len(coco["annotations"]),
                }
        params = {
            "format_version": _FORMAT_VERSION,
            "seed": seed,
            "min_side": min_side,
            "max_side": max_side,
            "counts": counts,
            "class_names": list(CLASS_NAMES),
            "files": _digests(tmp),  # what was written, so that a changed copy is never replaced
        }
        _write_json(tmp / _MARKER, params)
        _check_replaceable(out, option, advice)  # again, right before: the user may have edited it meanwhile
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"root": str(out), "seed": seed, "class_names": list(CLASS_NAMES), "splits": summary_splits}


# --------------------------------------------------------------------------------------------------
# Files


def _check_replaceable(out: Path, option: str, advice: str) -> None:
    check_replaceable(
        out,
        what="a synthetic dataset written by edgefpn",
        problem=changed_since_generated,
        folder=True,
        option=option,
        advice=advice,
        error=DataError,
    )


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def changed_since_generated(out: Path) -> str | None:
    """Why ``out`` is not exactly what :func:`generate` wrote there (a file edited, added or not a
    regular file), or None. Files deleted since are no loss and do not count."""
    try:
        marker = json.loads((out / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no {_MARKER} marker in it"
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict):
        return _changed_since_legacy(out)
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if rel == _MARKER or (path.is_dir() and not path.is_symlink()):
            continue
        if rel not in files:
            return f"{rel} was added since edgefpn generated it"
        if path.is_symlink() or not path.is_file() or sha256_file(path) != files[rel]:
            return f"{rel} was changed since edgefpn generated it"
    return None


def _changed_since_legacy(out: Path) -> str | None:
    """A marker from before per-file digests: the folder's sha256 in the data stage's manifest beside
    it (``<root>.manifest.json``) must still match, else nothing shows the folder is unchanged."""
    recorded = recorded_sha256(out)
    if recorded is not None and recorded == sha256_path(out):
        return None
    return (
        "its files cannot be shown unchanged since edgefpn generated it (an older edgefpn recorded "
        "no digests)"
    )


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, **_JSON_ARGS) + "\n", encoding="utf-8")


def _generate_split(
    root: Path, split: str, split_index: int, n: int, seed: int, min_side: int, max_side: int, bar: tqdm
) -> dict:
    images: list[dict] = []
    annotations: list[dict] = []
    for i in range(n):
        rng = np.random.default_rng([seed, split_index, i])
        w = int(rng.integers(min_side, max_side + 1))
        h = int(rng.integers(min_side, max_side + 1))
        pixels, objects = render(rng, h, w)
        file_name = f"{split}_{i:06d}.jpg"
        Image.fromarray(pixels).save(root / "images" / file_name, **_JPEG_ARGS)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for label, (x0, y0, x1, y1), area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
        bar.update(1)
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASS_NAMES)]
    info = {"description": f"edgefpn synthetic shapes, split {split}", "version": str(_FORMAT_VERSION)}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}

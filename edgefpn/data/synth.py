"""The built-in synthetic detection dataset: textured shapes on cluttered backgrounds, in COCO format.

Classes differ by *shape* only: every object gets a random colour and texture, and backgrounds carry
distractor fragments (lines, bars, arcs, irregular blobs) that belong to no class. Object sizes are
log-uniform from ``MIN_OBJECT`` pixels to ``MAX_OBJECT_FRAC`` of the shorter image side, so every FPN
level P3..P7 gets work. Objects may overlap; an annotation is dropped only when less than
``MIN_VISIBLE`` of its pixels stay visible. Boxes are the exact pixel extent of the full shape.

Everything is seeded: each image draws from its own ``numpy`` generator seeded with
``(seed, split, index)``, so splits never share a stream and the same call writes byte-identical
files (on the same machine and library versions).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from edgefpn.artifacts import sha256_file, sha256_path
from edgefpn.errors import DataError
from edgefpn.manifests import recorded_sha256
from edgefpn.ownership import check_replaceable

__all__ = ["CLASS_NAMES", "SPLITS", "generate"]

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring")
SPLITS: tuple[str, ...] = ("train", "val", "calib")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "noise", "gradient")

MIN_OBJECT = 8.0  # smallest object side, pixels
MAX_OBJECT_FRAC = 0.6  # largest object side, fraction of the shorter image side
MAX_OBJECTS = 8
MIN_VISIBLE = 0.4  # drop an annotation when more than 60% of the object is hidden
MIN_CONTRAST = 110.0  # RGB distance between an object's colour and its local background mean
MAX_BOX_COVER = 0.5  # a new object may hide at most this fraction of an earlier object's box

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
        pixels, objects = _render(rng, h, w)
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


# --------------------------------------------------------------------------------------------------
# Rendering


def _render(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[tuple[int, tuple, int]]]:
    """Draw one image. Returns ``uint8 [h, w, 3]`` and ``[(label, (x0, y0, x1, y1), area)]``."""
    canvas = _background(rng, h, w)  # float32 [h, w, 3]
    owner = np.full((h, w), -1, dtype=np.int16)  # index of the object that owns each pixel

    n = int(rng.integers(1, MAX_OBJECTS + 1))
    log_lo, log_hi = math.log(MIN_OBJECT), math.log(MAX_OBJECT_FRAC * min(h, w))
    sizes = np.sort(np.exp(rng.uniform(log_lo, log_hi, size=n)))[::-1]  # big objects first
    placed: list[tuple[int, tuple[int, int, int, int], np.ndarray, int]] = []  # label, box, mask, area
    boxes: list[tuple[int, int, int, int]] = []
    for size in sizes:
        label = int(rng.integers(len(CLASS_NAMES)))
        obj = _place_object(rng, canvas, owner, len(placed), label, float(size), boxes)
        if obj is not None:
            placed.append(obj)
            boxes.append(obj[1])

    objects = []
    for k, (label, box, mask, area) in enumerate(placed):
        x0, y0, x1, y1 = box
        visible = np.count_nonzero(owner[y0:y1, x0:x1][mask] == k)
        if visible >= MIN_VISIBLE * area:
            objects.append((label, box, area))

    # Mild sensor noise, shared by the three channels (cheap, and hides nothing).
    canvas += rng.integers(-6, 7, size=(h, w, 1), dtype=np.int8).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8), objects


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # A gradient between two random colours plus low-frequency colour blobs, both built on a small
    # [gh, gw, 3] grid and upsampled by Pillow (a linear gradient survives the interpolation).
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    a = rng.uniform(0, 2 * math.pi)
    gy = np.linspace(0, 1, gh)[:, None]
    gx = np.linspace(0, 1, gw)[None, :]
    t = np.clip((gx * math.cos(a) + gy * math.sin(a)) * 0.5 + 0.5, 0, 1)[:, :, None]  # [gh, gw, 1]
    amp = rng.uniform(0.15, 0.45)
    grid = (c0 + t * (c1 - c0)) * (1 - amp) + rng.uniform(0, 255, size=(gh, gw, 3)) * amp
    pil = Image.fromarray(grid.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)

    # Distractor fragments that are no class: lines, long bars, open arcs, irregular blobs.
    draw = ImageDraw.Draw(pil)
    side = min(h, w)
    for _ in range(int(rng.integers(2, 9))):
        kind = int(rng.integers(4))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cx, cy = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        if kind == 0:  # line
            x1, y1 = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            draw.line([(cx, cy), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:  # bar, aspect >= 4 so it never reads as a square
            length = float(rng.uniform(0.05, 0.3) * side)
            thick = max(1.0, length / float(rng.uniform(4, 10)))
            draw.polygon(_rotated_rect(cx, cy, length, thick, float(rng.uniform(0, math.pi))), fill=colour)
        elif kind == 2:  # open arc (< half a circle, so never a ring)
            r = float(rng.uniform(0.03, 0.2) * side)
            start = float(rng.uniform(0, 360))
            draw.arc(
                [cx - r, cy - r, cx + r, cy + r],
                start,
                start + float(rng.uniform(30, 150)),
                fill=colour,
                width=int(rng.integers(1, 4)),
            )
        else:  # lumpy blob: many vertices, mildly uneven radii; never a regular polygon, and
            # not spiky either: radii down to 0.25 drew blobs that read as stars, an unlabelled class
            k = int(rng.integers(9, 15))
            ang = (np.arange(k) + rng.uniform(-0.3, 0.3, size=k)) * (2 * math.pi / k)
            rad = rng.uniform(0.7, 1.0, size=k) * float(rng.uniform(0.02, 0.1) * side)
            draw.polygon(list(zip(cx + rad * np.cos(ang), cy + rad * np.sin(ang), strict=True)), fill=colour)
    return np.asarray(pil, dtype=np.float32)


def _rotated_rect(cx: float, cy: float, length: float, thick: float, a: float) -> list[tuple[float, float]]:
    c, s = math.cos(a), math.sin(a)
    pts = []
    for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        u, v = du * length / 2, dv * thick / 2
        pts.append((cx + u * c - v * s, cy + u * s + v * c))
    return pts


def _polygon_sdf(r: np.ndarray, phi: np.ndarray, n: int, radius: float) -> np.ndarray:
    # Regular n-gon with circumradius `radius`: fold the angle into one edge's sector.
    sector = 2 * math.pi / n
    folded = np.mod(phi, sector) - sector / 2
    return r * np.cos(folded) - radius * math.cos(math.pi / n)


def _star_sdf(r: np.ndarray, phi: np.ndarray, radius: float, inner: float = 0.45) -> np.ndarray:
    # Five-pointed star: fold into [0, pi/5] (tip at 0, inner vertex at pi/5), distance to edge line.
    sector = 2 * math.pi / 5
    folded = np.abs(np.mod(phi, sector) - sector / 2)
    tip = np.array([radius, 0.0])
    corner = inner * radius * np.array([math.cos(sector / 2), math.sin(sector / 2)])
    edge = corner - tip
    normal = np.array([-edge[1], edge[0]]) / np.hypot(*edge)  # outward: points away from the origin
    if normal @ (-tip) > 0:
        normal = -normal
    px, py = r * np.cos(folded), r * np.sin(folded)
    return (px - tip[0]) * normal[0] + (py - tip[1]) * normal[1]


def _shape_sdf(label: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) of class ``label`` centred at 0 with circumradius ``radius``."""
    name = CLASS_NAMES[label]
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) - radius / math.sqrt(2)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        arm, half = 0.95 * radius, 0.3 * radius
        return np.minimum(np.maximum(au - arm, av - half), np.maximum(au - half, av - arm))
    r = np.sqrt(u * u + v * v)
    if name == "circle":
        return r - radius
    if name == "ring":
        return np.abs(r - 0.75 * radius) - 0.25 * radius
    phi = np.arctan2(v, u)
    if name == "triangle":
        return _polygon_sdf(r, phi, 3, radius)
    if name == "hexagon":
        return _polygon_sdf(r, phi, 6, radius)
    if name == "star":
        return _star_sdf(r, phi, radius)
    raise AssertionError(name)  # unreachable: CLASS_NAMES is closed


def _place_object(
    rng: np.random.Generator,
    canvas: np.ndarray,
    owner: np.ndarray,
    index: int,
    label: int,
    size: float,
    boxes: list[tuple[int, int, int, int]],
) -> tuple[int, tuple[int, int, int, int], np.ndarray, int] | None:
    """Draw one object onto ``canvas`` in place. Returns (label, box xyxy, full mask in box, area)."""
    h, w = owner.shape
    radius = size / 2
    theta = float(rng.uniform(0, 2 * math.pi))
    for _ in range(30):
        cx = float(rng.uniform(radius, w - radius))
        cy = float(rng.uniform(radius, h - radius))
        px0, py0 = max(0, int(cx - radius) - 1), max(0, int(cy - radius) - 1)
        px1, py1 = min(w, int(math.ceil(cx + radius)) + 2), min(h, int(math.ceil(cy + radius)) + 2)
        if not _hides_earlier((px0, py0, px1, py1), boxes):
            break
    else:
        return None

    # Coordinates of pixel centres in the object's rotated frame. [ph, 1] and [1, pw] broadcast.
    dy = (np.arange(py0, py1, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(px0, px1, dtype=np.float32) + 0.5 - cx)[None, :]
    c, s = math.cos(theta), math.sin(theta)
    u = dx * c + dy * s  # [ph, pw]
    v = dy * c - dx * s
    sdf = _shape_sdf(label, u, v, radius)
    inside = sdf <= 0  # [ph, pw]
    area = int(np.count_nonzero(inside))
    if area == 0:
        return None
    alpha = np.clip(0.5 - sdf, 0.0, 1.0)[:, :, None]  # anti-aliased edge, [ph, pw, 1]

    patch = canvas[py0:py1, px0:px1]
    bg = patch[inside].mean(axis=0)  # [3]
    colour = _contrasting_colour(rng, bg)
    fill = _texture(rng, u, v, radius, colour, bg)  # [ph, pw, 3] or [3]
    patch += alpha * (fill - patch)
    owner[py0:py1, px0:px1][inside] = index

    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    box = (px0 + int(cols[0]), py0 + int(rows[0]), px0 + int(cols[-1]) + 1, py0 + int(rows[-1]) + 1)
    bx0, by0 = box[0] - px0, box[1] - py0
    mask = inside[by0 : by0 + box[3] - box[1], bx0 : bx0 + box[2] - box[0]]
    return label, box, mask, area


def _hides_earlier(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    for bx0, by0, bx1, by1 in boxes:
        iw = min(x1, bx1) - max(x0, bx0)
        ih = min(y1, by1) - max(y0, by0)
        if iw > 0 and ih > 0 and iw * ih > MAX_BOX_COVER * (bx1 - bx0) * (by1 - by0):
            return True
    return False


def _contrasting_colour(rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    for _ in range(12):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if np.linalg.norm(colour - bg) >= MIN_CONTRAST:
            return colour
    # Fall back to the opposite corner of the RGB cube, which is always >= 127 * sqrt(3) away.
    return np.where(bg < 128, 255.0, 0.0).astype(np.float32)


def _texture(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float, colour: np.ndarray, bg: np.ndarray
) -> np.ndarray:
    """Fill colours for an object: ``colour`` mixed with a second colour (pushed away from ``bg``)."""
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    if kind == "solid":
        return colour
    second = 0.55 * colour + 0.45 * (255.0 - bg) + rng.uniform(-20, 20, size=3).astype(np.float32)
    second = np.clip(second, 0, 255)
    if kind == "stripes":
        period = float(rng.uniform(3, max(4.0, radius / 2)))
        pattern = (np.mod(u, period) < period / 2).astype(np.float32)
    elif kind == "checker":
        cell = float(rng.uniform(2, max(3.0, radius / 3)))
        pattern = (np.mod(np.floor(u / cell) + np.floor(v / cell), 2)).astype(np.float32)
    elif kind == "noise":
        pattern = rng.random(u.shape, dtype=np.float32)
    else:  # gradient
        pattern = np.clip(u / (2 * radius) + 0.5, 0, 1)
    return colour + pattern[:, :, None] * (second - colour)

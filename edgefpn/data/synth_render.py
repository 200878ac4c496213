"""Drawing for the synthetic dataset: one seeded image of textured shapes on a cluttered background.

This module holds the pixels and the labels' geometry (the class shapes as signed-distance functions,
textures, distractor fragments, placement and the visibility rule); :mod:`edgefpn.data.synth` holds
the dataset writer around it (COCO json, JPEG files, the marker and replacing a previous output).
They are separate because what an image looks like and how a dataset folder is written change for
different reasons; every draw comes from the ``rng`` passed in, so the split keeps the generator's
output byte-identical.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASS_NAMES", "MAX_OBJECTS", "MIN_VISIBLE", "render"]

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "noise", "gradient")

MIN_OBJECT = 8.0  # smallest object side, pixels
MAX_OBJECT_FRAC = 0.6  # largest object side, fraction of the shorter image side
MAX_OBJECTS = 8
MIN_VISIBLE = 0.4  # drop an annotation when more than 60% of the object is hidden
MIN_CONTRAST = 110.0  # RGB distance between an object's colour and its local background mean
MAX_BOX_COVER = 0.5  # a new object may hide at most this fraction of an earlier object's box


def render(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[tuple[int, tuple, int]]]:
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

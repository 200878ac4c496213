"""Training augmentation on the original image: random crop, photometric jitter, letterbox scale jitter.

numpy and OpenCV only, like :mod:`edgefpn.data.preprocess`. Everything here runs *before* the one
shared ``preprocess()`` letterbox, on the decoded ``uint8 [h, w, 3]`` image and its boxes in original
pixels, so the model input keeps the deploy geometry (image at the top-left, mean-colour padding) and
val, calibration and deploy preprocessing are untouched.

Each part is configured by ``edgefpn.config.AugmentConfig`` and is off when its field is ``None``;
with every part off :func:`augment` returns its inputs unchanged. All randomness comes from the
``rng`` argument: a fixed generator state gives the same output.

Boxes leave every geometric step through :func:`clip_boxes`, the one place where boxes are clipped
to an image and tiny ones dropped (the training dataset uses it after letterboxing too).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edgefpn.config import AugmentConfig, CropConfig, PhotometricConfig

__all__ = ["MIN_BOX_SIDE", "augment", "clip_boxes", "photometric", "random_crop", "scale_jitter"]

MIN_BOX_SIDE = 1.0  # pixels of the image the boxes are clipped to; a box thinner than this is dropped


def clip_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    *,
    width: float,
    height: float,
    min_side: float = MIN_BOX_SIDE,
    min_visible: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy ``boxes`` to ``[0, width] x [0, height]``; drop those left thinner than ``min_side``
    or, with ``min_visible > 0``, keeping less than that share of their area.

    Returns new ``(boxes float32 [K', 4], labels [K'])``; the inputs are not modified.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = boxes.copy()
    np.clip(clipped[:, 0::2], 0, width, out=clipped[:, 0::2])
    np.clip(clipped[:, 1::2], 0, height, out=clipped[:, 1::2])
    bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (bw >= min_side) & (bh >= min_side)
    if min_visible > 0:
        area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
        keep &= bw * bh >= min_visible * area
    return clipped[keep], np.asarray(labels)[keep]


def _window(image: np.ndarray, x0: int, y0: int, win_w: int, win_h: int, fill: np.ndarray) -> np.ndarray:
    """The ``win_w x win_h`` window of ``image`` at ``(x0, y0)`` (may reach outside: filled with ``fill``)."""
    h, w = image.shape[:2]
    if x0 >= 0 and y0 >= 0 and x0 + win_w <= w and y0 + win_h <= h:
        return np.ascontiguousarray(image[y0 : y0 + win_h, x0 : x0 + win_w])
    out = np.empty((win_h, win_w, image.shape[2]), dtype=image.dtype)
    out[...] = fill
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + win_w, w), min(y0 + win_h, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def random_crop(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, *, rng: np.random.Generator, cfg: CropConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """With probability ``cfg.prob``, crop a window whose sides are ``U(min_scale, max_scale)`` of the
    image's, at a uniform position; boxes are shifted, cut to it and filtered by :func:`clip_boxes`."""
    if rng.random() >= cfg.prob:
        return image, boxes, labels
    h, w = image.shape[:2]
    cw = max(1, min(w, round(w * rng.uniform(cfg.min_scale, cfg.max_scale))))
    ch = max(1, min(h, round(h * rng.uniform(cfg.min_scale, cfg.max_scale))))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    shifted = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) - np.array([x0, y0, x0, y0], np.float32)
    boxes, labels = clip_boxes(shifted, labels, width=cw, height=ch, min_visible=cfg.min_visible)
    return np.ascontiguousarray(image[y0 : y0 + ch, x0 : x0 + cw]), boxes, labels


def scale_jitter(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    *,
    rng: np.random.Generator,
    scale_range: tuple[float, float],
    fill: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multiply the letterbox scale the image will get by ``s ~ U(lo, hi)``.

    The image is placed in a canvas of ``1/s`` its size (same aspect ratio) at a uniform position:
    ``s < 1`` surrounds it with ``fill`` (the mean colour, which normalises to ~0 like the letterbox
    padding), ``s > 1`` crops a window of it. The letterbox then fits the canvas to the input, so the
    objects come out ``s`` times the size they have at deploy time.
    """
    lo, hi = scale_range
    s = float(rng.uniform(lo, hi))
    h, w = image.shape[:2]
    cw, ch = max(1, round(w / s)), max(1, round(h / s))
    # the image's offset in the canvas: from -(w - cw) (window at its right edge) to (cw - w)
    ox = int(rng.integers(min(0, cw - w), max(0, cw - w) + 1))
    oy = int(rng.integers(min(0, ch - h), max(0, ch - h) + 1))
    out = _window(image, -ox, -oy, cw, ch, fill)
    shifted = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) + np.array([ox, oy, ox, oy], np.float32)
    boxes, labels = clip_boxes(shifted, labels, width=cw, height=ch)
    return out, boxes, labels


def photometric(image: np.ndarray, *, rng: np.random.Generator, cfg: PhotometricConfig) -> np.ndarray:
    """With probability ``cfg.prob``: brightness, contrast, saturation and hue jitter, in that order.

    ``image`` is RGB, ``uint8`` or float in ``[0, 255]``; the result has its dtype (uint8 rounded and
    saturated). Draws the same number of values from ``rng`` whatever the image.
    """
    draws = rng.uniform(-1.0, 1.0, size=4)
    if rng.random() >= cfg.prob:
        return image
    dtype = image.dtype
    x = image.astype(np.float32)
    # python floats: a numpy float64 factor would promote the float32 image to float64
    b, c, s = (
        float(1.0 + d * r)
        for d, r in zip(draws[:3], (cfg.brightness, cfg.contrast, cfg.saturation), strict=True)
    )
    x *= b
    if c != 1.0:
        # contrast around the mean grey level, like torchvision's adjust_contrast
        grey_mean = float((x @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
        x = x * c + (1.0 - c) * grey_mean
    if s != 1.0:
        grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = x * s + (1.0 - s) * grey[..., None]
    if cfg.hue > 0:
        np.clip(x, 0.0, 255.0, out=x)
        hsv = cv2.cvtColor(x / 255.0, cv2.COLOR_RGB2HSV)  # float input: H in [0, 360)
        hsv[..., 0] = (hsv[..., 0] + float(360.0 * cfg.hue * draws[3])) % 360.0
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    np.clip(x, 0.0, 255.0, out=x)
    if dtype == np.uint8:
        return np.rint(x).astype(np.uint8)
    return x.astype(dtype, copy=False)


def augment(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    *,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop, then photometric jitter, then scale jitter, each where ``cfg`` turns it on.

    Args:
        image: RGB ``[h, w, 3]`` (uint8, or float in [0, 255]).
        boxes: ``[K, 4]`` xyxy in ``image`` pixels.
        labels: ``[K]``.
        rng: the only source of randomness (the dataset gives each item its own).
        cfg: which parts run, and their ranges.
        mean: the normalisation mean (0..1); scale jitter fills with it, so that it normalises to ~0
            like the letterbox padding.

    Returns:
        ``(image, boxes float32 [K', 4], labels [K'])`` in the new image's pixels; with every part off,
        the inputs themselves.
    """
    if cfg.crop is not None:
        image, boxes, labels = random_crop(image, boxes, labels, rng=rng, cfg=cfg.crop)
    if cfg.photometric is not None:
        image = photometric(image, rng=rng, cfg=cfg.photometric)
    if cfg.scale_jitter is not None:
        fill = np.array([255.0 * m for m in mean], dtype=np.float32)
        fill = np.rint(fill).astype(image.dtype) if image.dtype == np.uint8 else fill.astype(image.dtype)
        image, boxes, labels = scale_jitter(
            image, boxes, labels, rng=rng, scale_range=cfg.scale_jitter, fill=fill
        )
    return image, boxes, labels


def is_active(cfg: AugmentConfig | None) -> bool:
    """Whether ``cfg`` turns any part on."""
    return cfg is not None and any(x is not None for x in (cfg.scale_jitter, cfg.crop, cfg.photometric))

"""The one preprocessing path shared by training, calibration, every backend and the device runtime.

numpy and OpenCV only (files are read by :mod:`edgefpn.data.images`, Pillow and OpenCV): this module
must import on a device without torch.

Geometry: the image keeps its aspect ratio, is resized with OpenCV's bilinear ``INTER_LINEAR`` (the
2-tap interpolation most detector pipelines deploy with; Pillow's antialiased ``BILINEAR`` took 7x as
long) so that it fits the model input, and is placed at the top-left corner (``pad_x = pad_y = 0``,
recorded anyway so the box mapping stays general). The rest of the input is padding which is exactly
``0.0`` after normalisation, i.e. the mean colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

# Reading files lives in images.py; these three are re-exported so that every existing
# ``from edgefpn.data.preprocess import load_image`` keeps working (the same function objects: no
# extra call on the end-to-end path). Patch ``edgefpn.data.images.MAX_IMAGE_PIXELS``, not this alias.
from edgefpn.data.images import MAX_IMAGE_PIXELS, image_size, load_image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_IMAGE_PIXELS",
    "Letterbox",
    "boxes_to_input",
    "boxes_to_original",
    "describe_preprocessing",
    "image_size",
    "letterbox_u8",
    "letterbox_u8_file",
    "normalise_coefficients",
    "letterbox",
    "load_image",
    "normalize",
    "preprocess",
    "preprocess_file",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Letterbox:
    """How an original image was placed into the model input.

    ``input = original * scale + pad``; ``orig_w`` / ``orig_h`` are the original image size.
    """

    scale: float
    pad_x: int
    pad_y: int
    orig_w: int
    orig_h: int


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(
            f"image must be a uint8 numpy array, got {type(image).__name__} "
            f"{getattr(image, 'dtype', '')}".rstrip()
        )
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must have shape [H, W, 3] with H, W >= 1, got {list(image.shape)}")


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"size must be (H, W) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _check_stats(name: str, values: Sequence[float], *, positive: bool) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or (positive and not np.all(arr > 0)):
        need = "3 finite positive numbers" if positive else "3 finite numbers"
        raise ValueError(f"{name} must be {need}, got {values!r}")
    return arr


def _fit(h: int, w: int, size: tuple[int, int]) -> tuple[int, int, Letterbox]:
    """``(new_h, new_w, letterbox)`` of an ``h x w`` image resized, aspect kept, to fit ``size`` = (H, W)."""
    out_h, out_w = size
    scale = min(out_h / h, out_w / w)
    new_w = min(out_w, max(1, round(w * scale)))
    new_h = min(out_h, max(1, round(h * scale)))
    return new_h, new_w, Letterbox(scale=float(scale), pad_x=0, pad_y=0, orig_w=w, orig_h=h)


def _resize_to_fit(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio so that the image fits in ``size`` = (H, W)."""
    h, w = image.shape[:2]
    new_h, new_w, lb = _fit(h, w, size)
    if (new_w, new_h) != (w, h):
        image = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=RESIZE_INTERPOLATION)
    return image, lb


# What the code above does, as the words and expressions a device integrator follows: the bundle's
# pipeline.json ships this (edgefpn.pipeline.package), generated here from the same constant and
# formulas, and tests/data/test_preprocess_description.py follows it literally and compares pixels.
RESIZE_INTERPOLATION = cv2.INTER_LINEAR
_OPENCV_NAMES = {
    cv2.INTER_NEAREST: "INTER_NEAREST",
    cv2.INTER_LINEAR: "INTER_LINEAR",
    cv2.INTER_CUBIC: "INTER_CUBIC",
    cv2.INTER_AREA: "INTER_AREA",
    cv2.INTER_LINEAR_EXACT: "INTER_LINEAR_EXACT",
}
_SCALE = "min(H / h, W / w)"  # _fit
_NEW_W = "min(W, max(1, round(w * scale)))"
_NEW_H = "min(H, max(1, round(h * scale)))"
_NORMALISE = "(x / 255 - mean) / std"  # _affine


def describe_preprocessing() -> dict[str, object]:
    """How :func:`preprocess` turns an RGB ``uint8 [h, w, 3]`` image into the model input ``[1, 3, H, W]``.

    ``scale``, ``new_w``, ``new_h`` and ``normalise`` are Python expressions (``round`` is Python's:
    halves to even); ``resize`` names the OpenCV call and interpolation. ``text`` is the same in words.
    """
    interpolation = _OPENCV_NAMES[RESIZE_INTERPOLATION]
    resize = {
        "library": "opencv",
        "function": "cv2.resize",
        "interpolation": interpolation,
        "call": f"cv2.resize(image, (new_w, new_h), interpolation=cv2.{interpolation})",
        "skipped_when": "(new_w, new_h) == (w, h)",
    }
    text = (
        f"keep aspect ratio: scale = {_SCALE}, new_w = {_NEW_W}, new_h = {_NEW_H} (Python round: halves to "
        f"even); resize with OpenCV {resize['call']} (not Pillow; skipped when the size is unchanged); image "
        f"at the top-left (pad_x = pad_y = 0); normalise {_NORMALISE} per RGB channel; padding 0.0 after "
        "normalisation; layout [1, 3, H, W] float32"
    )
    return {
        "channel_order": "RGB",
        "scale": _SCALE,
        "new_w": _NEW_W,
        "new_h": _NEW_H,
        "resize": resize,
        "placement": "top-left",
        "normalise": _NORMALISE,
        "pad_value": 0.0,
        "layout": "[1, 3, H, W] float32",
        "text": text,
    }


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image`` (``uint8 [h, w, 3]``) to fit ``size`` = (H, W) and pad to ``[H, W, 3]``.

    The image sits at the top-left corner; the padding is the ImageNet mean colour rounded to
    ``uint8`` (for display only: :func:`preprocess` pads after normalising, to an exact ``0.0``).
    """
    _check_image(image)
    out_h, out_w = _check_size(size)
    resized, lb = _resize_to_fit(image, (out_h, out_w))
    rh, rw = resized.shape[:2]
    fill = np.round(np.asarray(IMAGENET_MEAN) * 255.0).astype(np.uint8)
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    out[:] = fill
    out[lb.pad_y : lb.pad_y + rh, lb.pad_x : lb.pad_x + rw] = resized
    return out, lb


def _affine(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    # [2, 3] float32: (x / 255 - mean) / std == x * scale + offset, per channel
    return np.stack([1.0 / (255.0 * std), -mean / std]).astype(np.float32)


@lru_cache(maxsize=8)
def _cached_affine(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    coef = _affine(_check_stats("mean", mean, positive=False), _check_stats("std", std, positive=True))
    coef.flags.writeable = False
    return coef


def _stats_affine(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The validated ``[2, 3]`` (scale, offset) of ``mean`` / ``std``; built once per pair of tuples
    (the end-to-end path asks for it per image)."""
    if isinstance(mean, tuple) and isinstance(std, tuple):
        try:
            return _cached_affine(mean, std)
        except TypeError:  # unhashable items: the uncached path words the error
            pass
    return _affine(_check_stats("mean", mean, positive=False), _check_stats("std", std, positive=True))


def _normalize_into(out: np.ndarray, image: np.ndarray, coef: np.ndarray) -> None:
    """``out[c, :h, :w] = image[:, :, c] * scale[c] + offset[c]`` for ``uint8 [h, w, 3]`` ``image``.

    Per channel on contiguous planes (cv2.split), then one strided copy: ~2x faster than arithmetic
    or a lookup table written straight into the strided window of ``out``.
    """
    h, w = image.shape[:2]
    for c, plane in enumerate(cv2.split(np.ascontiguousarray(image))):  # 3 x [h, w] uint8
        v = plane.astype(np.float32)
        v *= coef[0, c]
        v += coef[1, c]
        out[c, :h, :w] = v


def _normalize_into_padded(resized: np.ndarray, coef: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 [h, w, 3]`` (h <= H, w <= W) -> ``float32 [3, H, W]``, image top-left, padding exactly 0."""
    out_h, out_w = size
    rh, rw = resized.shape[:2]
    out = np.empty((3, out_h, out_w), dtype=np.float32)
    out[:, rh:, :] = 0.0
    out[:, :rh, rw:] = 0.0
    _normalize_into(out, resized, coef)
    return out


def normalize(image_u8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``uint8 [H, W, 3]`` -> ``float32 [3, H, W]`` with ``(x / 255 - mean) / std`` per channel."""
    _check_image(image_u8)
    coef = _stats_affine(mean, std)
    h, w = image_u8.shape[:2]
    out = np.empty((3, h, w), dtype=np.float32)
    _normalize_into(out, image_u8, coef)
    return out


def preprocess(
    image: np.ndarray,
    *,
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[np.ndarray, Letterbox]:
    """Letterbox and normalise one ``uint8 [h, w, 3]`` RGB image for the model.

    Returns:
        A C-contiguous ``float32 [3, H, W]`` array whose padding is exactly ``0.0``, and the
        :class:`Letterbox` needed to map boxes back to the original image.
    """
    _check_image(image)
    size = _check_size(size)
    coef = _stats_affine(mean, std)
    resized, lb = _resize_to_fit(image, size)
    return _normalize_into_padded(resized, coef, size), lb


def preprocess_file(
    path: str | Path,
    *,
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[np.ndarray, Letterbox]:
    """``preprocess(load_image(path), ...)``: the end-to-end path's one call from file to model input.

    Raises:
        DataError: as :func:`load_image`.
    """
    size = _check_size(size)
    coef = _stats_affine(mean, std)
    resized, lb = _resize_to_fit(load_image(path), size)
    return _normalize_into_padded(resized, coef, size), lb


def letterbox_u8_file(path: str | Path, *, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, Letterbox]:
    """The uint8-input contract's host side: decode + resize only, as :func:`preprocess_file` does.

    Returns ``uint8 [1, H, W, 3]`` RGB with the resized image at the top-left (the rest 0: the graph
    masks it to the float contract's 0.0 padding), ``valid_hw`` int32 ``[1, 2]`` (rows, cols of the
    resized image) and the :class:`Letterbox`. The graph applies :func:`normalise_coefficients`.
    """
    return letterbox_u8(load_image(path), size=size)


def letterbox_u8(image: np.ndarray, *, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, Letterbox]:
    """:func:`letterbox_u8_file` of an ``uint8 [h, w, 3]`` RGB image already decoded (a video frame)."""
    _check_image(image)
    size = _check_size(size)
    resized, lb = _resize_to_fit(image, size)
    rh, rw = resized.shape[:2]
    out = np.zeros((1, *size, 3), dtype=np.uint8)
    out[0, :rh, :rw] = resized
    return out, np.array([[rh, rw]], dtype=np.int32), lb


def normalise_coefficients(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``float32 [2, 3]``: per RGB channel ``(x / 255 - mean) / std == x * [0] + [1]``, the two float32
    operations :func:`preprocess` applies (an end-to-end graph applies the same, bit for bit)."""
    return np.array(_stats_affine(mean, std))


def _check_boxes(boxes_xyxy: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes_xyxy)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [K, 4], got {list(boxes.shape)}")
    return boxes.astype(np.float32, copy=False)


def _check_letterbox(lb: Letterbox) -> None:
    if not (math.isfinite(lb.scale) and lb.scale > 0):
        raise ValueError(f"Letterbox.scale must be finite and positive, got {lb.scale}")


def boxes_to_input(boxes_xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Map ``[K, 4]`` xyxy boxes from original-image pixels to model-input pixels (``float32``)."""
    boxes = _check_boxes(boxes_xyxy)
    _check_letterbox(lb)
    pad = np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], dtype=np.float32)
    return boxes * np.float32(lb.scale) + pad


def boxes_to_original(boxes_xyxy: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Map ``[K, 4]`` xyxy boxes from model-input pixels back to original pixels, clipped to the image."""
    boxes = _check_boxes(boxes_xyxy)
    _check_letterbox(lb)
    pad = np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], dtype=np.float32)
    out = (boxes - pad) / np.float32(lb.scale)
    hi = np.array([lb.orig_w, lb.orig_h, lb.orig_w, lb.orig_h], dtype=np.float32)
    return np.clip(out, 0.0, hi)

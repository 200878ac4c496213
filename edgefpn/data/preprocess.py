"""The one preprocessing path shared by training, calibration, every backend and the device runtime.

numpy + Pillow only: this module must import on a device without torch.

Geometry: the image keeps its aspect ratio, is resized with Pillow ``BILINEAR`` so that it fits the
model input, and is placed at the top-left corner (``pad_x = pad_y = 0``, recorded anyway so the box
mapping stays general). The rest of the input is padding which is exactly ``0.0`` after
normalisation, i.e. the mean colour.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from edgefpn.errors import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_IMAGE_PIXELS",
    "Letterbox",
    "boxes_to_input",
    "boxes_to_original",
    "letterbox",
    "load_image",
    "normalize",
    "preprocess",
    "preprocess_file",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Pillow's own default decompression-bomb limit. We enforce it ourselves as well, so that a caller
# (or another library) setting ``Image.MAX_IMAGE_PIXELS = None`` does not switch the check off.
MAX_IMAGE_PIXELS = 89_478_485

# Modes whose pixels are integers wider than 8 bits: shown as 16-bit and reduced to 8 bits.
_WIDE_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})

# Everything Pillow may raise on a broken or hostile file (some plugins raise SyntaxError or
# struct.error on malformed headers).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


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


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8`` RGB ``[H, W, 3]``.

    The pixel geometry is kept as stored: EXIF orientation is *not* applied, because COCO boxes
    (and ``width`` / ``height``) refer to the stored pixels. Any mode (L, LA, P, RGBA, CMYK, I;16, ...)
    is converted to RGB; alpha is dropped and 16-bit values are reduced to their high byte.

    Raises:
        DataError: ``"<path>: <problem>"`` for a missing, empty, truncated, unsupported or
            oversized (decompression bomb) file.
    """
    with _open_image(path) as im:
        return _to_rgb(im)


@contextmanager
def _open_image(path: str | Path) -> Iterator[Image.Image]:
    """The decoded Pillow image of ``path`` (closed on exit), every file problem as a :class:`DataError`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: image file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            try:
                # Image.open only reads the header: check the size before decoding anything.
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"{path}: image is {im.width}x{im.height} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS} allowed (possible decompression bomb)"
                    )
                im.load()
            except BaseException:
                im.close()
                raise
    except DataError:
        raise
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not an image file Pillow can read") from None
    except _DECODE_ERRORS as e:
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    with im:  # errors of the caller's block are the caller's, not decode errors
        yield im


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if im.mode in _WIDE_INT_MODES:
        a = np.asarray(im).astype(np.int64)
        a = (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0)
        a = np.clip(a, 0.0, 255.0).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 numpy array, got {type(image).__name__} "
                         f"{getattr(image, 'dtype', '')}".rstrip())
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
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    return image, lb


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


def _lut(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    # [3, 256]: the normalised value of every possible byte, computed in float64 then rounded once.
    x = np.arange(256, dtype=np.float64) / 255.0
    return ((x[None, :] - mean[:, None]) / std[:, None]).astype(np.float32)


@lru_cache(maxsize=8)
def _cached_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    lut = _lut(_check_stats("mean", mean, positive=False), _check_stats("std", std, positive=True))
    lut.flags.writeable = False
    return lut


def _stats_lut(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The validated ``[3, 256]`` lookup table of ``mean`` / ``std``; built once per pair of tuples
    (the end-to-end path asks for it per image)."""
    if isinstance(mean, tuple) and isinstance(std, tuple):
        try:
            return _cached_lut(mean, std)
        except TypeError:  # unhashable items: the uncached path words the error
            pass
    return _lut(_check_stats("mean", mean, positive=False), _check_stats("std", std, positive=True))


def _normalize_into_padded(resized: np.ndarray, lut: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 [h, w, 3]`` (h <= H, w <= W) -> ``float32 [3, H, W]``, image top-left, padding exactly 0.

    One pass per channel: the lookup writes straight into the padded buffer (no resized float copy,
    no separate transpose), and only the padding is zeroed.
    """
    out_h, out_w = size
    rh, rw = resized.shape[:2]
    out = np.empty((3, out_h, out_w), dtype=np.float32)
    out[:, rh:, :] = 0.0
    out[:, :rh, rw:] = 0.0
    for c in range(3):
        # uint8 indices are always in range; mode="clip" lets numpy write straight into the view.
        np.take(lut[c], resized[:, :, c], out=out[c, :rh, :rw], mode="clip")
    return out


def normalize(image_u8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``uint8 [H, W, 3]`` -> ``float32 [3, H, W]`` with ``(x / 255 - mean) / std`` per channel."""
    _check_image(image_u8)
    lut = _stats_lut(mean, std)
    h, w = image_u8.shape[:2]
    out = np.empty((3, h, w), dtype=np.float32)
    for c in range(3):
        np.take(lut[c], image_u8[:, :, c], out=out[c], mode="clip")
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
    lut = _stats_lut(mean, std)
    resized, lb = _resize_to_fit(image, size)
    return _normalize_into_padded(resized, lut, size), lb


def preprocess_file(
    path: str | Path,
    *,
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[np.ndarray, Letterbox]:
    """``preprocess(load_image(path), ...)``, bit for bit, without the round trips through numpy.

    An RGB file (every colour JPEG) is resized by Pillow straight from the decoded image: no
    ``uint8`` copy of the full-size image, no ``Image.fromarray`` back. Pillow's resize reads the
    same pixels either way, so the result is identical; other modes take the general path.

    Raises:
        DataError: as :func:`load_image`.
    """
    size = _check_size(size)
    lut = _stats_lut(mean, std)
    with _open_image(path) as im:
        if im.mode != "RGB":
            resized, lb = _resize_to_fit(_to_rgb(im), size)
        else:
            new_h, new_w, lb = _fit(im.height, im.width, size)
            small = im.resize((new_w, new_h), Image.Resampling.BILINEAR) if (new_w, new_h) != im.size else im
            resized = np.asarray(small)  # [h, w, 3] uint8
    return _normalize_into_padded(resized, lut, size), lb


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

"""How long the in-graph contract's host part, the JPEG decode, takes with each decoder at hand.

Issue 15's 1.2x floor leaves the host ~0.42 ms per image next to the default INT8 network; this measures
what the decode alone costs on the val images, with OpenCV (what edgefpn uses) and two other
libjpeg-turbo bindings, and what the same pixels would cost stored the way cameras usually store them.

    .tools/bin/uv run --no-project --with numpy --with opencv-python-headless==5.0.0.93 \\
        --with pillow==13.0.0 --with simplejpeg --with imagecodecs \\
        python benchmarks/e2e/jpeg_decode.py data/synth/images

One thread (as the end-to-end path decodes), 100 val images, p50 per image, best of 5 passes.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION


def _p50_ms(decode: Callable[[bytes], np.ndarray], blobs: list[bytes], passes: int = 5) -> float:
    best = float("inf")
    for _ in range(passes):
        times = []
        for blob in blobs:
            t0 = time.perf_counter()
            decode(blob)
            times.append(time.perf_counter() - t0)
        best = min(best, float(np.median(times)) * 1e3)
    return best


def _opencv(blob: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(blob, dtype=np.uint8), _FLAGS)


def _reencode(path: Path, quality: int, subsampling: int) -> bytes:
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.save(buf, format="JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


def main(folder: str) -> None:
    cv2.setNumThreads(1)
    paths = sorted(Path(folder).glob("val_*.jpg"))[:100]
    if not paths:
        raise SystemExit(f"{folder}: no val_*.jpg images")
    blobs = [p.read_bytes() for p in paths]
    decoders: dict[str, Callable[[bytes], np.ndarray]] = {"opencv imdecode (edgefpn)": _opencv}
    try:
        import simplejpeg

        decoders["simplejpeg"] = lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB")
        decoders["simplejpeg fastdct + fastupsample (other pixels)"] = lambda b: simplejpeg.decode_jpeg(
            b, colorspace="RGB", fastdct=True, fastupsample=True
        )
    except ImportError:
        print("simplejpeg not installed: skipped")
    try:
        import imagecodecs

        decoders["imagecodecs jpeg8"] = imagecodecs.jpeg8_decode
    except ImportError:
        print("imagecodecs not installed: skipped")
    reference = [_opencv(b) for b in blobs[:20]]
    h, w = reference[0].shape[:2]
    print(f"{len(blobs)} images, first {w}x{h}, {np.mean([len(b) for b in blobs]) / 1024:.1f} KB on average")
    print("| decoder | p50 ms | same pixels as OpenCV |\n|---|---:|---|")
    for name, decode in decoders.items():
        same = all(np.array_equal(decode(b), r) for b, r in zip(blobs, reference, strict=False))
        print(f"| {name} | {_p50_ms(decode, blobs):.3f} | {'yes' if same else 'no'} |")
    print("\n| the same pixels stored as | KB | OpenCV p50 ms |\n|---|---:|---:|")
    for quality, subsampling in [(92, 0), (92, 2), (75, 2)]:
        again = [_reencode(p, quality, subsampling) for p in paths]
        label = f"quality {quality}, {'4:4:4' if subsampling == 0 else '4:2:0'}"
        print(f"| {label} | {np.mean([len(b) for b in again]) / 1024:.1f} | {_p50_ms(_opencv, again):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/synth/images")

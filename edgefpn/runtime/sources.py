"""Frame sources of the streaming runtime: an image folder, or anything OpenCV's VideoCapture opens
(a video file, a camera index, an RTSP/HTTP URL), or frames a program generates. numpy + OpenCV only.

Every source yields :class:`Frame` s (``uint8 [h, w, 3]`` RGB, the runtime's image layout) and raises
:class:`SourceError` (a :class:`~edgefpn.errors.DataError`, one line) when it fails mid-stream; the frames
it yielded before that stand.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefpn.errors import DataError

__all__ = [
    "ArraySource",
    "CaptureSource",
    "Frame",
    "ImageFolderSource",
    "Source",
    "SourceError",
    "open_source",
]

# FFmpeg logs a truncated or corrupt stream from C ("[mjpeg @ 0x..] huffman table decode error") on
# stderr, once per bad packet; the runtime says it in one ``error:`` line instead. Read by OpenCV
# when it opens a capture, so set before the first one (a user's own setting wins).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


class SourceError(DataError):
    """A source cannot be opened, or failed mid-stream."""


@dataclass
class Frame:
    """One captured frame. ``captured`` is :func:`time.perf_counter` when the source was asked for it."""

    source: int
    index: int
    name: str
    image: np.ndarray | None  # uint8 [h, w, 3] RGB; None once the stream no longer needs it
    captured: float


class Source:
    """A named iterator of RGB frames; ``pace_fps`` (if set) releases frames no faster than real time."""

    name: str = ""

    def __init__(self, *, pace_fps: float | None = None) -> None:
        if pace_fps is not None and not pace_fps > 0:
            raise ValueError(f"pace_fps must be > 0, got {pace_fps}")
        self.pace_fps = pace_fps

    def _read(self) -> Iterator[tuple[str, np.ndarray]]:  # (frame name, RGB image)
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file (idempotent)."""

    def frames(self, source_id: int = 0) -> Iterator[Frame]:
        start = time.perf_counter()
        it = self._read()
        index = 0
        try:
            while True:
                if self.pace_fps is not None:  # a live camera does not wait for its reader
                    due = start + index / self.pace_fps
                    if (delay := due - time.perf_counter()) > 0:
                        time.sleep(delay)
                captured = time.perf_counter()
                try:
                    name, image = next(it)
                except StopIteration:
                    return
                yield Frame(source_id, index, name, image, captured)
                index += 1
        finally:
            self.close()


class ImageFolderSource(Source):
    """The images of a folder in sorted order, read as ``infer`` reads them (:func:`load_image`)."""

    def __init__(
        self, folder: Path, *, pace_fps: float | None = None, log: Callable[[str], None] | None = None
    ) -> None:
        from edgefpn.runtime import list_images

        super().__init__(pace_fps=pace_fps)
        self.name = str(folder)
        self.paths = list_images(Path(folder), **({"log": log} if log else {}))

    def _read(self) -> Iterator[tuple[str, np.ndarray]]:
        from edgefpn.data.preprocess import load_image

        for path in self.paths:
            yield path.name, load_image(path)  # DataError names the file: the stream ends there


class CaptureSource(Source):
    """A cv2.VideoCapture: a video file, a camera index (``"0"``) or a URL (``rtsp://``, ``http://``).

    A file whose header announces N frames and that ends before frame N (a truncated or corrupt
    video) raises :class:`SourceError` after the frames that did decode: OpenCV's ``read`` returns
    False at a broken packet just as it does at the end, so the header's count tells them apart.
    Live sources (camera, URL) announce no count; a camera that stops delivering ends its stream.
    """

    def __init__(self, spec: str | int, *, pace_fps: float | None = None) -> None:
        import cv2

        super().__init__(pace_fps=pace_fps)
        self.name = str(spec)
        self.live = isinstance(spec, int) or _is_url(str(spec))
        if not self.live and not Path(str(spec)).is_file():  # not live: a str
            raise SourceError(
                f"{spec}: no such video file (a source is an image folder, a video file, "
                "a camera index or an rtsp:// / http(s):// URL)"
            )
        # one decoder thread: the reader is a thread of its own already, and FFmpeg's frame threads only
        # add hand-offs (measured on the 320 px val video: 0.52-0.58 vs 0.56-0.69 ms of CPU per frame)
        self._cap = cv2.VideoCapture(spec, cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])
        if not self._cap.isOpened():  # a backend that refuses the setting: open it as it comes
            self._cap.release()
            self._cap = cv2.VideoCapture(spec)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"{spec}: OpenCV cannot open it as a video source")
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.expected = int(count) if not self.live and count > 0 else None

    def _read(self) -> Iterator[tuple[str, np.ndarray]]:
        import cv2

        index = 0
        while True:
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                if self.expected is not None and index < self.expected:
                    raise SourceError(
                        f"{self.name}: the video stopped decoding after frame {index} of the "
                        f"{self.expected} its header announces (truncated or corrupt)"
                    )
                return
            if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
                raise SourceError(
                    f"{self.name}: frame {index} is {bgr.dtype} {list(bgr.shape)}, not 8-bit colour"
                )
            yield f"{index:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1

    def close(self) -> None:
        if getattr(self, "_cap", None) is not None:
            self._cap.release()
            del self._cap


class ArraySource(Source):
    """Frames a program supplies (``uint8 [h, w, 3]`` RGB): a synthetic camera, or a test's stand-in."""

    def __init__(
        self, images: Iterable[np.ndarray], *, name: str = "frames", pace_fps: float | None = None
    ) -> None:
        super().__init__(pace_fps=pace_fps)
        self.name = name
        self.images = images

    def _read(self) -> Iterator[tuple[str, np.ndarray]]:
        for index, image in enumerate(self.images):
            if not (
                isinstance(image, np.ndarray)
                and image.ndim == 3
                and image.shape[2] == 3
                and image.dtype == np.uint8
            ):
                raise SourceError(f"{self.name}: frame {index} is not a uint8 [h, w, 3] array")
            yield f"{index:06d}", image


def _is_url(text: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text) is not None


def open_source(
    spec: str, *, pace_fps: float | None = None, log: Callable[[str], None] | None = None
) -> Source:
    """``spec`` as a source: an existing folder -> images; digits -> camera index; else VideoCapture.

    Raises:
        SourceError / DataError: the source cannot be opened (one line).
    """
    if spec.isdigit():
        return CaptureSource(int(spec), pace_fps=pace_fps)
    if not _is_url(spec) and Path(spec).is_dir():
        return ImageFolderSource(Path(spec), pace_fps=pace_fps, log=log)
    return CaptureSource(spec, pace_fps=pace_fps)

"""The one calibration set: which images, in which order, streamed through THE preprocessing.

Every consumer (ONNX Runtime's calibrators, NNCF, TensorRT later) reads the same deterministic list
of images through :func:`edgefpn.data.preprocess.preprocess`, one batch at a time, so memory stays flat
however many images are used. The set never overlaps the val split: that is checked by resolved path
and by file content, because a copy of a val image under another name still leaks the val split into
the quantization parameters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefpn.artifacts import backend_versions, sha256_file
from edgefpn.config import Config, to_dict
from edgefpn.data.coco import load_split
from edgefpn.data.preprocess import load_image, preprocess
from edgefpn.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "CalibrationSet", "OrtCalibrationReader", "cache_key", "nncf_dataset"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class _Image:
    path: Path
    sha256: str


class CalibrationSet:
    """The deterministic calibration images of ``cfg`` (``data.calib_split`` or ``quantize.calib_folder``).

    Raises:
        DataError: one line naming the folder or file: a folder without images, a missing split, or a
            calibration image that is also in the val split (same resolved path or same content).
    """

    def __init__(self, cfg: Config) -> None:
        q, m = cfg.quantize, cfg.model
        self.input_size: tuple[int, int] = (m.input_size[0], m.input_size[1])
        self.mean: tuple[float, ...] = tuple(m.mean)
        self.std: tuple[float, ...] = tuple(m.std)
        self.source = q.calib_folder or f"{cfg.data.root} (split {cfg.data.calib_split!r})"
        # files of the folder that are not images edgefpn reads, by name: the caller says so
        self.skipped: tuple[str, ...] = ()
        if q.calib_folder:
            candidates, self.skipped = _folder_images(Path(q.calib_folder))
        else:
            candidates = _split_images(cfg)
        chosen = _choose(candidates, q.num_images, seed=cfg.run.seed)
        self.images: tuple[_Image, ...] = tuple(_Image(p, sha256_file(p)) for p in chosen)
        self.available = len(candidates)
        _refuse_val_overlap(self.images, cfg)

    @property
    def paths(self) -> list[Path]:
        return [im.path for im in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> dict:
        """What the manifest records about the set."""
        return {
            "source": str(self.source),
            "images": len(self.images),
            "available": self.available,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def load(self, path: Path) -> np.ndarray:
        """One image through the shared preprocessing: ``float32 [3, H, W]``."""
        chw, _ = preprocess(load_image(path), size=self.input_size, mean=self.mean, std=self.std)
        return chw

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield ``float32 [B, 3, H, W]`` batches (the last may be smaller); one batch in memory at a time."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        paths = self.paths
        for start in range(0, len(paths), batch_size):
            yield np.stack([self.load(p) for p in paths[start : start + batch_size]])

    def iter_model_inputs(self, model_batch: int, *, batch_size: int = 8) -> Iterator[np.ndarray]:
        """Yield ``[model_batch, 3, H, W]`` arrays for a static-batch model.

        The stream is read ``batch_size`` images at a time; a last incomplete model batch is filled
        with the first images of the set again (repeats change no min/max and barely a histogram).
        """
        pending: list[np.ndarray] = []
        head: list[np.ndarray] = []
        for batch in self.iter_batches(max(batch_size, 1)):
            for chw in batch:
                if len(head) < model_batch:
                    head.append(chw)
                pending.append(chw)
                if len(pending) == model_batch:
                    yield np.stack(pending)
                    pending = []
        if pending:
            fill = [head[i % len(head)] for i in range(model_batch - len(pending))]
            yield np.stack(pending + fill)


def _split_images(cfg: Config) -> list[Path]:
    split = load_split(cfg.data.root, cfg.data.calib_split)
    if not split.images:
        raise DataError(f"{split.ann_file}: the calibration split has no images")
    return [rec.path for rec in split.images]


def _folder_images(folder: Path) -> tuple[list[Path], tuple[str, ...]]:
    """The folder's image files (recursively, sorted) and the other files' relative names."""
    if not folder.is_dir():
        raise DataError(f"{folder}: calibration folder not found (quantize.calib_folder)")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    found = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise DataError(
            f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the calibration folder"
        )
    skipped = tuple(p.relative_to(folder).as_posix() for p in files if p.suffix.lower() not in IMAGE_SUFFIXES)
    return found, skipped


def _choose(paths: Sequence[Path], n: int, *, seed: int) -> list[Path]:
    """``n`` of ``paths`` chosen with a seeded generator, kept in their original order."""
    if len(paths) <= n:
        return list(paths)
    idx = np.sort(np.random.default_rng(seed).choice(len(paths), size=n, replace=False))
    return [paths[i] for i in idx]


def _refuse_val_overlap(images: Sequence[_Image], cfg: Config) -> None:
    try:
        val = load_split(cfg.data.root, cfg.data.val_split)
    except DataError:
        return  # no val split here: nothing to leak into (the accuracy loop reports its own error)
    val_paths = {rec.path.resolve(): rec.path for rec in val.images}
    for im in images:
        if im.path.resolve() in val_paths:
            raise DataError(
                f"{im.path}: calibration image is in the val split {cfg.data.val_split!r}; "
                "calibrating on val images inflates the measured accuracy"
            )
    val_hashes: dict[str, Path] = {}
    for rec in val.images:
        if rec.path.is_file():
            val_hashes.setdefault(sha256_file(rec.path), rec.path)
    for im in images:
        if im.sha256 in val_hashes:
            raise DataError(
                f"{im.path}: calibration image has the same content as val image "
                f"{val_hashes[im.sha256]}; calibrating on val images inflates the measured accuracy"
            )


def cache_key(model_sha256: str, calib: CalibrationSet, cfg: Config) -> str:
    """sha256 over everything calibration ranges depend on: model, images, preprocessing, settings."""
    q = cfg.quantize
    blob = {
        "model": model_sha256,
        "images": [[str(im.path), im.sha256] for im in calib.images],
        "preprocess": {
            "input_size": list(calib.input_size),
            "mean": list(calib.mean),
            "std": list(calib.std),
        },
        "quantize": {
            "method": q.method,
            "percentile": q.percentile,
            "num_images": q.num_images,
            "exclude_nodes": to_dict(q.exclude_nodes),
        },
        "versions": backend_versions(),  # ORT computes the ranges, Pillow / numpy the inputs
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# readers: the same stream for ONNX Runtime and NNCF


class OrtCalibrationReader:
    """An ONNX Runtime ``CalibrationDataReader`` over a :class:`CalibrationSet` (streams, rewindable).

    ``get_next()`` returns ``{input_name: [model_batch, 3, H, W]}`` and ``None`` at the end.
    """

    def __init__(
        self, calib: CalibrationSet, *, input_name: str = "images", model_batch: int = 1, batch_size: int = 8
    ) -> None:
        self.calib, self.input_name = calib, input_name
        self.model_batch, self.batch_size = model_batch, batch_size
        self._it: Iterator[np.ndarray] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self.calib.iter_model_inputs(self.model_batch, batch_size=self.batch_size)
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:
        self._it = None

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item

    def __len__(self) -> int:
        return -(-len(self.calib) // self.model_batch)


class _Reiterable:
    """An iterable NNCF can walk more than once; each walk streams the set again."""

    def __init__(self, calib: CalibrationSet, model_batch: int, batch_size: int) -> None:
        self.calib, self.model_batch, self.batch_size = calib, model_batch, batch_size

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.calib.iter_model_inputs(self.model_batch, batch_size=self.batch_size)

    def __len__(self) -> int:
        return -(-len(self.calib) // self.model_batch)


def nncf_dataset(calib: CalibrationSet, *, model_batch: int = 1, batch_size: int = 8):
    """An ``nncf.Dataset`` yielding ``[model_batch, 3, H, W]`` arrays from the same stream."""
    import nncf

    return nncf.Dataset(_Reiterable(calib, model_batch, batch_size))

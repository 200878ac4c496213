"""The device runtime: run an engine bundle with numpy, Pillow, OpenCV and one backend; no PyTorch.

``python -m edgefpn.runtime infer --bundle bundle.tar --images DIR --out dets.json`` and
``python -m edgefpn.runtime bench --bundle bundle.tar``. Loading a bundle:

1. :func:`edgefpn.bundle.read_verified` checks the tar headers, the manifest and every member's sha256
   from the tar stream, writing nothing;
2. :func:`select_engine` picks an engine from the manifest alone (:mod:`edgefpn.runtime.choice`), or
   refuses with one line;
3. :func:`edgefpn.bundle.extract` writes the bundle to a fresh folder, re-hashes it and renames it
   into place; only then is the engine loaded, through the same runner, preprocessing
   (:mod:`edgefpn.data.preprocess`), decoding (:mod:`edgefpn.postprocess`) and
   :func:`edgefpn.inference.detect_file` as the check stage.

Engine choice (by recorded speed on this kind of device, else a fixed order) is
:mod:`edgefpn.runtime.choice`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgefpn import bundle as bundle_io
from edgefpn.backends import BACKENDS
from edgefpn.backends.base import THRESH_INPUT, BatchedRunner, EngineSpec, Runner
from edgefpn.errors import BackendUnavailable, ModelFileError
from edgefpn.inference import PrePost, detect_file
from edgefpn.postprocess import Detections, PostprocessParams
from edgefpn.runtime import schema
from edgefpn.runtime.choice import (
    PREFERENCE,
    _log,
    _recorded,
    rank_engines,
    recorded_latencies,
    select_engine,
    target_problem,
)

__all__ = [
    "PREFERENCE",
    "BundleSession",
    "FrameStages",
    "check_bundled_onnx",
    "detections_to_records",
    "rank_engines",
    "recorded_latencies",
    "select_engine",
    "target_problem",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def check_bundled_onnx(bundle: Path, name: str, *, backend: str | None = None) -> None:
    """Refuse an ONNX engine that is not self-contained, before it is extracted or loaded.

    ``edgefpn package`` only bundles self-contained ONNX (:func:`edgefpn.onnx_guard.save_onnx`), so a
    tensor whose data lives in another file (``../../home/user/.ssh/id_rsa``, say) means a crafted
    bundle: no external data is ever followed from a bundle. Checked for every file ONNX Runtime will
    read (``backend="onnxruntime"``), whatever its name, and for every ``.onnx``.
    """
    from edgefpn.onnx_guard import external_data_entries

    record = BACKENDS.get(backend) if backend is not None else None
    if not name.endswith(".onnx") and not (record is not None and record.reads_onnx):
        return
    try:
        entries = external_data_entries(bundle_io.read_member(bundle, name))
    except ValueError as exc:
        raise ModelFileError(f"{bundle}: {name}: {exc}") from None
    if entries:
        tensor, info = entries[0]
        raise ModelFileError(
            f"{bundle}: {name}: tensor {tensor!r} keeps its data in external file "
            f"{info.get('location', '')!r}; a bundled ONNX must be self-contained"
        )


def prepost_from(params: Mapping[str, Any]) -> PrePost:
    """The bundle's ``pipeline.json`` (preprocess / postprocess / arch) as a :class:`PrePost`."""
    pre, post = params["preprocess"], params["postprocess"]
    return PrePost(
        input_size=tuple(pre["input_size"]),
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        post=PostprocessParams(
            score_thresh=post["score_thresh"],
            nms_thresh=post["nms_thresh"],
            topk_candidates=post["topk_candidates"],
            detections_per_img=post["detections_per_img"],
            strides=tuple(post["strides"]),
            levels=tuple(post["levels"]),
        ),
        # bundles from before the arch was recorded were all FCOS (the only arch edgefpn had)
        arch=str(params.get("arch", "fcos")),
    )


def open_runner(spec: EngineSpec, *, threads: int, hint: str = "latency") -> BatchedRunner:
    """The backend's runner, imported by module (never the torch runner), taking any number of images
    per call whatever the engine's static batch (:class:`edgefpn.backends.base.BatchedRunner`).
    ``hint``: OpenVINO's performance hint (``throughput`` for the streaming runtime)."""
    return BatchedRunner(_backend_runner(spec, threads=threads, hint=hint))


def _backend_runner(spec: EngineSpec, *, threads: int, hint: str = "latency") -> Runner:
    record = BACKENDS.get(spec.backend)
    if record is None:
        raise BackendUnavailable(f"{spec.path}: unknown backend {spec.backend!r}")
    return record.runner.open(spec, threads=threads, hint=hint)


@dataclass(frozen=True)
class FrameStages:
    """:func:`edgefpn.inference.detect_file`'s path split into its stages, so that the streaming runtime
    (:mod:`edgefpn.runtime.stream`) can run them on different threads: ``prepare`` (image -> the
    engine's feed), ``infer`` (one engine call) and ``decode`` (outputs -> detections). Nothing is
    re-implemented here: each stage is the one call the single-image path makes, in the engine's
    contract (a float or a uint8 feed; a numpy decode only for raw outputs)."""

    prepost: PrePost
    runner: Runner
    batch: int = 1  # the engine's static N (of ``images`` [N, 3, H, W] or ``images_u8`` [N, H, W, 3])

    def prepare(self, image: Any) -> tuple[dict[str, Any], Any]:
        """``uint8 [h, w, 3]`` RGB -> (the engine's batch-1 feed, its letterbox)."""
        return self.prepost.feed_image(image)

    def stack(self, feeds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Batch-1 feeds -> one feed of the engine's N, zero-padded past ``len(feeds)`` (padding items
        are decoded by nobody: :meth:`decode` cuts them off; their score threshold is 1.0, which no
        score passes, so they cost a detections engine no NMS)."""
        if self.batch == 1 and len(feeds) == 1:
            return dict(feeds[0])
        out = {}
        for name, first in feeds[0].items():
            array = np.full((self.batch, *first.shape[1:]), 1.0 if name == THRESH_INPUT else 0, first.dtype)
            for k, feed in enumerate(feeds):
                array[k] = feed[name][0]
            out[name] = array
        return out

    def infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        """One engine call on a feed of the engine's batch (:meth:`stack`)."""
        return self.runner.infer(dict(feed))

    def decode(self, outputs: Mapping[str, Any], letterboxes: Sequence[Any]) -> list[Detections]:
        """Engine outputs -> detections in original pixels, one per letterbox; batch items beyond
        ``len(letterboxes)`` are padding and are cut off before decoding."""
        if len(letterboxes) < self.batch:
            outputs = {k: v[: len(letterboxes)] for k, v in outputs.items()}
        return self.prepost.detections(outputs, letterboxes)  # numpy decode only for raw outputs


@dataclass
class BundleSession:
    """A verified, extracted bundle with one engine loaded. Use as a context manager.

    ``extract_to`` (default: a temporary folder, removed on exit) may exist only as an empty folder or
    an unchanged earlier extraction (:func:`edgefpn.bundle.check_extract_dest`, checked first); it is
    replaced only after the bundle verified and an engine was chosen.
    """

    bundle: Path
    extract_to: Path | None = None
    engine: str | None = None
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    tensorrt_probe: Callable[[], tuple] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    hint: str = "latency"  # OpenVINO's performance hint; the streaming runtime asks for "throughput"

    def __enter__(self) -> BundleSession:
        try:
            return self._enter()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _enter(self) -> BundleSession:
        import json
        import time

        self._tmp = None
        if self.extract_to is not None:
            bundle_io.check_extract_dest(Path(self.extract_to))  # before any work
        t0 = time.perf_counter()
        self.bundle = Path(self.bundle)
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")
        manifest = bundle_io.read_verified(self.bundle)  # nothing written before this passes
        # what the manifest and pipeline.json mean, and that every path stays in the bundle: before
        # an engine is chosen, anything is extracted or any backend is imported
        schema.validate_manifest(manifest, self.bundle)
        params = schema.validate_pipeline(
            bundle_io.read_member(self.bundle, manifest["pipeline"]), manifest["pipeline"], self.bundle
        )
        t1 = time.perf_counter()
        latencies, kind = ({}, None) if self.engine is not None else _recorded(manifest, self.bundle)
        why: list[str] = []  # said once the engine has loaded: a refused bundle gets its one error line only
        self.entry = select_engine(
            manifest,
            self.bundle,
            name=self.engine,
            tensorrt_probe=self.tensorrt_probe,
            latencies=latencies,
            kind=kind,
            log=why.append,
        )
        check_bundled_onnx(self.bundle, self.entry["path"], backend=self.entry["backend"])
        if BACKENDS[self.entry["backend"]].reads_onnx:  # its declared shapes, from the verified bytes
            from edgefpn.onnx_guard import io_shapes

            shapes = io_shapes(bundle_io.read_member(self.bundle, self.entry["path"]))  # parsed just above
            self._batch = _check_engine_io(shapes, params, self.bundle, self.entry)
        if self.extract_to is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="edgefpn-bundle-"))
            self.root = self._tmp / "bundle"
        else:
            self.root = Path(self.extract_to)
        self.manifest = bundle_io.extract(self.bundle, self.root)
        t2 = time.perf_counter()
        if json.loads((self.root / manifest["pipeline"]).read_bytes()) != params:
            raise ModelFileError(
                f"{self.bundle}: {manifest['pipeline']} changed while it was being extracted"
            )
        try:  # schema-valid settings the decoder still refuses: one line, no traceback
            # the engine's contract: a uint8 feed, and no numpy decode when it returns detections
            self.prepost = replace(
                prepost_from(params),
                input=self.entry.get("input", "float"),
                contract=self.entry.get("contract", "raw"),
            )
            self.category_ids = [int(c) for c in params["classes"]["category_ids"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(
                f"{self.bundle}: {manifest['pipeline']}: unusable pipeline settings "
                f"({type(exc).__name__}: {exc})"
            ) from None
        e = self.entry
        for rel in schema.engine_reads(e):  # members only (checked above); resolved once more on disk
            _confined(self.root, rel, self.bundle)
        self.spec = EngineSpec(e["name"], e["backend"], e["precision"], self.root / e["path"])
        self.runner = open_runner(self.spec, threads=self.threads, hint=self.hint).__enter__()
        if hasattr(self.runner, "io_shapes"):  # what the backend loaded (OpenVINO, TensorRT: known only now)
            self._batch = _check_engine_io(self.runner.io_shapes(), params, self.bundle, e)
        self.timings_s = {"verify": t1 - t0, "extract": t2 - t1, "load": time.perf_counter() - t2}
        _log(f"[runtime] {self.bundle}: verified {len(manifest['files'])} files; engine {e['name']}")
        for line in why:
            _log(line)
        return self

    def __exit__(self, *exc: object) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.__exit__(*exc)
            del self.runner
        if (tmp := getattr(self, "_tmp", None)) is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def detect(self, path: str | Path) -> Detections:
        """Image file -> detections in original pixels (``detect_image`` of the decoded file)."""
        return detect_file(self.runner, self.prepost, path)

    def detect_image(self, image: np.ndarray) -> Detections:
        """The per-frame path: ``uint8 [h, w, 3]`` RGB -> preprocess -> infer -> detections, in the
        engine's contract (float or uint8 feed; numpy decode only for a raw-output engine)."""
        feed, lb = self.prepost.feed_image(image)
        return self.prepost.detections(self.runner.infer(feed), [lb])[0]

    @property
    def stages(self) -> FrameStages:
        """This session's per-frame path split into its stages (for :mod:`edgefpn.runtime.stream`)."""
        return FrameStages(self.prepost, self.runner, batch=int(getattr(self, "_batch", 1)))


def _confined(root: Path, rel: str, bundle: Path) -> Path:
    """``root/rel``, refused unless it is a regular file (no link) that resolves inside ``root``."""
    path = root.joinpath(*rel.split("/"))
    inside = path.resolve().is_relative_to(root.resolve())
    if not inside or path.is_symlink() or not path.is_file():
        raise ModelFileError(f"{bundle}: {rel!r} does not resolve to a file inside the extracted bundle")
    return path


def _check_engine_io(
    shapes: Mapping[str, tuple], params: Mapping[str, Any], bundle: Path, entry: Mapping[str, Any]
) -> int:
    """The engine's input is ``[N, 3, H, W]`` (static N >= 1) of pipeline.json's input size
    (``images_u8`` ``[N, H, W, 3]`` for a uint8-input engine), and its class outputs have pipeline.json's
    class count: refused up front, not as a shape error (or an IndexError into the category ids) in
    the middle of a run. Returns N."""
    from edgefpn.backends.base import INPUT_NAME

    name = entry["name"]
    h, w = params["preprocess"]["input_size"]
    uint8 = entry.get("input", "float") == "uint8"
    got = shapes.get("images_u8" if uint8 else INPUT_NAME)
    # a static batch N >= 1 (export.batch): the streaming runtime fills N frames per call
    n = got[0] if got is not None and len(got) == 4 and isinstance(got[0], int) and got[0] >= 1 else 1
    want = (n, h, w, 3) if uint8 else (n, 3, h, w)
    if entry.get("contract", "raw") == "detections" and "det_boxes" not in shapes:
        raise ModelFileError(
            f"{bundle}: engine {name!r} is recorded as returning detections but has no "
            "det_boxes output; refusing the bundle"
        )
    if entry.get("contract", "raw") == "detections" and THRESH_INPUT not in shapes:
        raise ModelFileError(
            f"{bundle}: engine {name!r} returns detections but takes no {THRESH_INPUT} input (an "
            "in-graph engine from an older edgefpn, its threshold fixed); rebuild and repackage it"
        )
    if got is None or tuple(got) != want:
        raise ModelFileError(
            f"{bundle}: pipeline.json preprocess.input_size [{h}, {w}] disagrees with engine "
            f"{name!r}: its input {'images_u8' if uint8 else INPUT_NAME!r} is "
            f"{list(got) if got is not None else 'missing'}, "
            f"expected {list(want)}; refusing the bundle"
        )
    num_classes = params["classes"]["num_classes"]
    if "roi_cls" in shapes:  # Faster R-CNN: C + 1 logits per RoI (class 0 is the background)
        classes = {shapes["roi_cls"][-1] - 1} if isinstance(shapes["roi_cls"][-1], int) else set()
    else:
        classes = {
            s[1] for n, s in shapes.items() if n.startswith("cls_") and len(s) > 1 and isinstance(s[1], int)
        }
    if classes and classes != {num_classes}:
        raise ModelFileError(
            f"{bundle}: pipeline.json classes.num_classes is {num_classes}, engine {name!r} "
            f"outputs {sorted(classes)} classes; refusing the bundle"
        )
    return n


def detections_to_records(det: Detections, file_name: str, category_ids: Sequence[int]) -> list[dict]:
    """The records of ``edgefpn predict``: file_name, category_id, bbox [x, y, w, h], score."""
    out = []
    for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True):
        x1, y1, x2, y2 = box
        out.append(
            {
                "file_name": file_name,
                "category_id": int(category_ids[label]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(score),
            }
        )
    return out


def list_images(folder: Path, *, log: Callable[[str], None] = _log) -> list[Path]:
    """The image files of ``folder`` (by suffix, sorted); every other entry is named in one ``log`` line
    with the reason it is skipped (a GIF, a sub-folder, a text file), never dropped without a word."""
    from edgefpn.errors import DataError

    if folder.is_file():
        raise DataError(f"{folder}: is a file, not a folder of images (give the folder that holds it)")
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    images, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{p.name} (not {'/'.join(s[1:] for s in IMAGE_SUFFIXES)})")
        elif not p.is_file():
            skipped.append(f"{p.name} (not a regular file)")
        else:
            images.append(p)
    if not images:
        raise DataError(
            f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})"
            + (f"; skipped {len(skipped)}: {', '.join(skipped[:3])}" if skipped else "")
        )
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log(f"warning: {folder}: skipped {len(skipped)} of {len(images) + len(skipped)} entries: {shown}")
    return images

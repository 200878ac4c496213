"""Stage `data`: make sure the dataset exists (generating the built-in one) and is readable."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefpn.artifacts import sha256_file
from edgefpn.config import Config, config_hash
from edgefpn.data.coco import CocoSplit, ImageRecord, check_image_sizes, load_split
from edgefpn.data.preprocess import image_size
from edgefpn.data.synth import generate
from edgefpn.digests import cached_image_size
from edgefpn.errors import DataError
from edgefpn.pipeline.common import current_context, log
from edgefpn.stages import DATA


@dataclass(frozen=True)
class DatasetInfo:
    root: Path
    annotation_hashes: dict[str, str]  # split -> sha256 of its instances file

    def ann_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    def split(self, split: str) -> CocoSplit:
        """The split, its images' sizes checked against the annotation file (headers read once, cached)."""
        ann = self.ann_file(split)
        content = (str(ann.resolve()), sha256_file(ann) if ann.is_file() else None)
        if (loaded := _PARSED.get(content)) is None:  # parsed once per content: stages reload it often
            loaded = load_split(self.root, split)
            _PARSED[content] = loaded
        check_image_sizes(loaded, _image_size)  # every time: the images may change, their sizes are cached
        if loaded.skipped and (key := (str(loaded.ann_file), self.annotation_hashes.get(split))) not in (
            reported := current_context().reported
        ):
            reported.add(key)  # said once per file and content, however often a stage reloads it
            shown = "; ".join(loaded.skipped[:3]) + ("; ..." if len(loaded.skipped) > 3 else "")
            log(f"[data] {loaded.ann_file}: skipped {len(loaded.skipped)} annotation(s): {shown}")
        return loaded

    def images_hash(self, split: str) -> str:
        """sha256 over the split's image files (name and content, in annotation order).

        A stage reads the pixels, so they are as much its input as the annotation file: an image
        replaced under the same name makes the stages that read it stale. Digests are cached by
        stat (:mod:`edgefpn.digests`): on a rerun nothing is read that did not change.
        """
        h = hashlib.sha256()
        for rec in self.split(split).images:
            h.update(f"{rec.file_name}\0{sha256_file(rec.path)}\n".encode())
        return h.hexdigest()


def require_annotations(split: CocoSplit, records: Sequence[ImageRecord], *, what: str) -> None:
    """Refuse to measure ``what`` on ``records`` when they hold no usable box: every AP would be
    undefined (-1) for the reference and the engines alike, a delta of 0 that passes any gate.

    Raises:
        DataError: one line naming the annotation file, the images and how many annotations were skipped.
    """
    if not records:
        raise DataError(
            f"{split.ann_file}: no images in split {split.split!r}: {what} has nothing to measure"
        )
    if not any(len(r.boxes) for r in records):
        skipped = f", {len(split.skipped)} annotation(s) skipped as unusable" if split.skipped else ""
        raise DataError(
            f"{split.ann_file}: no usable annotations on the {len(records)} image(s) of split "
            f"{split.split!r}{skipped}: {what} has nothing to measure (mAP would be undefined)"
        )


def _image_size(path: Path) -> tuple[int, int]:
    return cached_image_size(path, image_size)


_PARSED: dict[tuple[str, str | None], CocoSplit] = {}  # (annotation file, its sha256) -> its split


def run(cfg: Config, *, force: bool = False, progress: bool = True) -> DatasetInfo:
    key = (str(Path(cfg.data.root).resolve()), config_hash(cfg.data))
    checked = current_context().datasets  # (root, settings) already brought up to date by this command
    if not force and key in checked:
        return checked[key]
    info = _run(cfg, force=force, progress=progress)
    checked[key] = info
    return info


def _run(cfg: Config, *, force: bool, progress: bool) -> DatasetInfo:
    root = Path(cfg.data.root)
    splits = (cfg.data.train_split, cfg.data.val_split, cfg.data.calib_split)
    if cfg.data.builtin:
        chash = DATA.config_hash(cfg)
        if DATA.fresh(root, config_hash=chash, inputs={}, force=force) is None:
            s = cfg.data.synth
            log(f"[data] generating the built-in dataset into {root}")
            generate(
                root,
                num_train=s.num_train,
                num_val=s.num_val,
                num_calib=s.num_calib,
                seed=s.seed,
                min_side=s.min_side,
                max_side=s.max_side,
                show_progress=progress,
                option="data.root",
                advice=", or set data.builtin=false to use it as your own dataset",
            )
            DATA.record(root, config_hash=chash, inputs={}, extra={"synth": vars(s)})
        else:
            log(f"[data] up to date: {root}")
    elif not root.is_dir():
        raise DataError(f"{root}: dataset folder not found (data.root)")
    hashes = {}
    for split in splits:
        ann = root / "annotations" / f"instances_{split}.json"
        if not ann.is_file():
            if split == cfg.data.calib_split:
                continue  # calibration may come from elsewhere; quantize says so if it needs it
            raise DataError(f"{ann}: annotation file not found (split {split!r} of data.root {root})")
        hashes[split] = sha256_file(ann)
    return DatasetInfo(root=root, annotation_hashes=hashes)

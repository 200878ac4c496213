"""The disagreement gallery of report.html: the val images where an engine's detections differ most
from the reference's, with both sets of boxes drawn over the image.

``check`` feeds every (reference, engine) detection pair to a :class:`Gallery` during its val pass; it
keeps the few worst images per engine (boxes only, in report.json). ``render`` draws them as inline
JPEG thumbnails (data: URIs), so the page stays one self-contained file. Boxes are compared at the
deployment score threshold: what a deployed detector would show, not mAP's low-score tail.
"""

from __future__ import annotations

import base64
import heapq
import io
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from edgefpn.postprocess import Detections, box_iou

__all__ = ["Gallery", "disagreement", "render"]

PER_ENGINE = 3
THUMB_SIDE = 320  # px, the longer side of a thumbnail
# colours: reference boxes green, engine boxes blue; what is wrong is thick and warm
COLOURS = {
    "ref": (46, 160, 67),
    "test": (31, 111, 235),
    "missed": (214, 39, 40),
    "extra": (255, 127, 14),
    "flip": (148, 103, 189),
}


def disagreement(ref: Detections, test: Detections, iou_thresh: float = 0.5) -> dict[str, Any]:
    """Greedy matching by IoU (as ``metrics.detections.match_detections``, same-class boxes preferred),
    keeping which boxes matched. Returns ``ref_status`` / ``test_status`` (``matched``, ``flip``,
    ``missed`` / ``extra``) and the counts ``missed``, ``extra``, ``flips``."""
    ref_status = ["missed"] * len(ref)
    test_status = ["extra"] * len(test)
    if len(ref) and len(test):
        iou = box_iou(ref.boxes, test.boxes).astype(np.float64)  # [R, T]
        free = np.ones(len(test), dtype=bool)
        same = ref.labels[:, None] == test.labels[None, :]  # [R, T]
        for r in np.argsort(-ref.scores, kind="stable"):
            cand = np.where(free, iou[r], -1.0)
            # a same-class box first: per-class NMS leaves boxes of several classes on one object, and
            # pairing them across classes would show relabels that are not there
            pool = np.where(same[r] & (cand >= iou_thresh), cand, -1.0)
            t = int(np.argmax(pool)) if pool.max() >= iou_thresh else int(np.argmax(cand))
            if cand[t] >= iou_thresh:
                free[t] = False
                status = "matched" if ref.labels[r] == test.labels[t] else "flip"
                ref_status[int(r)] = test_status[t] = status
    return {
        "ref_status": ref_status,
        "test_status": test_status,
        "missed": ref_status.count("missed"),
        "extra": test_status.count("extra"),
        "flips": ref_status.count("flip"),
    }


def _above(det: Detections, thresh: float) -> Detections:
    keep = det.scores >= thresh
    return Detections(det.boxes[keep], det.scores[keep], det.labels[keep])


def _boxes(det: Detections, status: list[str]) -> list[list]:
    return [
        [*(round(float(v), 1) for v in b), int(lbl), round(float(s), 3), st]
        for b, lbl, s, st in zip(det.boxes, det.labels, det.scores, status, strict=True)
    ]


class Gallery:
    """Keeps, per engine, the ``per_engine`` images with the most missed + extra + relabelled boxes."""

    def __init__(self, score_thresh: float, per_engine: int = PER_ENGINE) -> None:
        self.score_thresh, self.per_engine = score_thresh, per_engine
        self._heaps: dict[str, list[tuple]] = {}
        self._seen = 0

    def update(self, engine: str, image: Path, image_id: int, ref: Detections, test: Detections) -> None:
        ref, test = _above(ref, self.score_thresh), _above(test, self.score_thresh)
        d = disagreement(ref, test)
        score = d["missed"] + d["extra"] + d["flips"]
        heap = self._heaps.setdefault(engine, [])
        if score == 0 or (len(heap) == self.per_engine and score <= heap[0][0]):
            return
        self._seen += 1  # tie-break: the earlier image stays first
        entry = {
            "image": str(image),
            "image_id": int(image_id),
            "missed": d["missed"],
            "extra": d["extra"],
            "flips": d["flips"],
            "ref": _boxes(ref, d["ref_status"]),
            "test": _boxes(test, d["test_status"]),
        }
        item = (score, -self._seen, entry)
        if len(heap) < self.per_engine:
            heapq.heappush(heap, item)
        else:
            heapq.heapreplace(heap, item)

    def compute(self, engines: list[str]) -> dict[str, Any]:
        """The report section: the threshold and, per engine (worst first), the kept images."""
        return {
            "score_thresh": self.score_thresh,
            "per_engine": self.per_engine,
            "engines": {
                e: [item[2] for item in sorted(self._heaps.get(e, []), reverse=True)] for e in engines
            },
        }


def _thumbnail(entry: dict[str, Any]) -> str | None:
    """A base64 JPEG of the image with the boxes drawn; None when the image cannot be read."""
    from PIL import Image, ImageDraw

    try:
        with Image.open(entry["image"]) as im:
            img = im.convert("RGB")
    except OSError:
        return None
    scale = THUMB_SIDE / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    draw = ImageDraw.Draw(img)
    # reference first, engine over it; the wrong ones last so that nothing hides them
    layers = [(entry["ref"], "ref", "missed"), (entry["test"], "test", "extra")]
    for wrong in (False, True):
        for boxes, base, bad in layers:
            for *xyxy, _label, _score, status in boxes:
                if (status != "matched") != wrong:
                    continue
                colour = (
                    COLOURS[base] if status == "matched" else COLOURS["flip" if status == "flip" else bad]
                )
                x0, y0, x1, y1 = (v * scale for v in xyxy)
                draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=3 if wrong else 1)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _swatch(name: str, label: str) -> str:
    r, g, b = COLOURS[name]
    return f"<span class='sw' style='border-color:rgb({r},{g},{b})'></span>{escape(label)}"


def render(report: dict[str, Any]) -> str:
    """The gallery section of report.html ('' when the report has none)."""
    gallery = report.get("gallery")
    if not gallery:
        return ""
    legend = " ".join(
        [
            _swatch("ref", "reference"),
            _swatch("test", "engine"),
            _swatch("missed", "missed"),
            _swatch("extra", "extra"),
            _swatch("flip", "other class"),
        ]
    )
    parts = [
        "<h2>Where engines disagree with the reference</h2><div class='card wide'>",
        f"<p class='note'>Per engine, the {gallery['per_engine']} val images with the most missed, extra "
        f"or relabelled detections (score ≥ {gallery['score_thresh']:.2f}, IoU ≥ 0.5, same class preferred). "
        f"{legend}</p>",
    ]
    for engine, entries in gallery["engines"].items():
        if not entries:
            parts.append(f"<h3>{escape(engine)}</h3><p class='note'>no disagreement at this threshold</p>")
            continue
        parts.append(f"<h3>{escape(engine)}</h3><div class='gallery'>")
        for entry in entries:
            b64 = _thumbnail(entry)
            caption = f"image {entry['image_id']}: {entry['missed']} missed, {entry['extra']} extra" + (
                f", {entry['flips']} other class" if entry["flips"] else ""
            )
            img = (
                f"<img alt='{escape(caption)}' src='data:image/jpeg;base64,{b64}'>"
                if b64
                else f"<p class='note'>{escape(entry['image'])} is no longer readable</p>"
            )
            parts.append(f"<figure>{img}<figcaption>{escape(caption)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)

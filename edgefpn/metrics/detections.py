"""Agreement of an engine's detections with the reference detections (the second depth of ``check``)."""

from __future__ import annotations

import numpy as np

from edgefpn.postprocess import Detections, box_iou

__all__ = ["DetectionAgreement", "match_detections"]


_SAME_PX = 1e-3


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def match_detections(ref: Detections, test: Detections, iou_thresh: float = 0.5) -> dict:
    """Greedily match ``test`` detections to ``ref`` detections, class-agnostically.

    Reference detections, by decreasing score, each take the unmatched test detection with the highest
    IoU, if that IoU is at least ``iou_thresh``. Identical boxes count as IoU 1, zero-area ones included.

    Returns:
        ``n_ref``, ``n_test``, ``matched``, ``label_flips`` (matched pairs whose labels differ),
        ``iou_sum``, ``score_error_sum`` and ``max_score_error`` (absolute score differences) over the
        matched pairs.
    """
    if not 0.0 < iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    n_ref, n_test = len(ref), len(test)
    out = {
        "n_ref": n_ref,
        "n_test": n_test,
        "matched": 0,
        "label_flips": 0,
        "iou_sum": 0.0,
        "score_error_sum": 0.0,
        "max_score_error": 0.0,
    }
    if n_ref == 0 or n_test == 0:
        return out
    iou = box_iou(ref.boxes, test.boxes).astype(np.float64)  # [R, T]
    # Identical boxes agree whatever their area: IoU is 0/0 for a zero-area box (which NMS, and so
    # box_iou, must call 0), and a bit-exact engine would otherwise show such boxes as unmatched.
    # A zero-area box within _SAME_PX of the other engine's is the same box too: two exact FP32 engines
    # decode the same point to 1-2 ulp apart (OpenVINO fuses the decode's multiply-add), and an
    # untrained model's detections are mostly such points (measured: 26% of a tiny run's FP32 pairs).
    rb, tb = np.asarray(ref.boxes), np.asarray(test.boxes)
    diff = np.abs(rb[:, None, :].astype(np.float64) - tb[None, :, :])  # [R, T, 4]
    point = (_area(rb) <= 0)[:, None] | (_area(tb) <= 0)[None, :]
    same = np.all(diff == 0, axis=2) | (point & np.all(diff <= _SAME_PX, axis=2))  # [R, T]
    iou[same] = 1.0
    free = np.ones(n_test, dtype=bool)
    ref_idx, test_idx = [], []
    for r in np.argsort(-ref.scores, kind="stable"):
        cand = np.where(free, iou[r], -1.0)  # [T]
        t = int(np.argmax(cand))
        if cand[t] >= iou_thresh:
            free[t] = False
            ref_idx.append(int(r))
            test_idx.append(t)
    if not ref_idx:
        return out
    ri, ti = np.asarray(ref_idx), np.asarray(test_idx)
    score_err = np.abs(ref.scores[ri].astype(np.float64) - test.scores[ti].astype(np.float64))
    out.update(
        matched=len(ri),
        label_flips=int(np.count_nonzero(ref.labels[ri] != test.labels[ti])),
        iou_sum=float(iou[ri, ti].sum()),
        score_error_sum=float(score_err.sum()),
        max_score_error=float(score_err.max()),
    )
    return out


class DetectionAgreement:
    """Accumulates ``match_detections`` over images.

    Example::

        agree = DetectionAgreement()
        for ref, test in zip(ref_dets, test_dets):
            agree.update(ref, test)
        report = agree.compute()
    """

    def __init__(self, iou_thresh: float = 0.5) -> None:
        if not 0.0 < iou_thresh <= 1.0:
            raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
        self.iou_thresh = iou_thresh
        self._n_ref = self._n_test = self._matched = self._flips = self._denominator = 0
        self._iou_sum = self._score_error_sum = self._max_score_error = 0.0

    def update(self, ref: Detections, test: Detections) -> dict:
        """Add one image; returns its ``match_detections`` result."""
        m = match_detections(ref, test, self.iou_thresh)
        self._n_ref += m["n_ref"]
        self._n_test += m["n_test"]
        self._matched += m["matched"]
        self._flips += m["label_flips"]
        self._denominator += max(m["n_ref"], m["n_test"])
        self._iou_sum += m["iou_sum"]
        self._score_error_sum += m["score_error_sum"]
        self._max_score_error = max(self._max_score_error, m["max_score_error"])
        return m

    def compute(self) -> dict:
        """``matched_fraction`` = sum of matched / sum of max(n_ref, n_test) over images (1.0 when there
        is nothing to match); ``mean_iou`` and ``mean_score_error`` over matched pairs."""
        matched = self._matched
        if self._denominator == 0:  # no detections on either side: perfect agreement
            matched_fraction, mean_iou = 1.0, 1.0
        else:
            matched_fraction = matched / self._denominator
            mean_iou = self._iou_sum / matched if matched else 0.0
        return {
            "matched_fraction": float(matched_fraction),
            "mean_iou": float(mean_iou),
            "max_score_error": float(self._max_score_error),
            "mean_score_error": float(self._score_error_sum / matched) if matched else 0.0,
            "label_flips": int(self._flips),
            "matched": int(matched),
            "n_ref": int(self._n_ref),
            "n_test": int(self._n_test),
        }

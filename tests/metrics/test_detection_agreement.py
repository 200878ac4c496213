from __future__ import annotations

import numpy as np
import pytest

from edgefpn.metrics.detections import DetectionAgreement, match_detections
from edgefpn.postprocess import Detections


def _dets(boxes, scores, labels) -> Detections:
    return Detections(
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(scores, np.float32),
        np.asarray(labels, np.int64),
    )


REF = _dets([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 10]], [0.9, 0.8, 0.3], [0, 1, 2])


def test_identical_detections_match_fully():
    m = match_detections(REF, REF)
    assert m["matched"] == 3 and m["label_flips"] == 0
    assert m["iou_sum"] == pytest.approx(3.0) and m["max_score_error"] == 0.0


def test_identical_zero_area_boxes_match():
    """Identical zero-area boxes match: a bit-exact engine once showed 0.928 matched because IoU is 0/0
    for a zero-area box (boxes clipped to the image edge, degenerate decodes): identical boxes match
    whatever their area."""
    ref = _dets(
        [[0, 0, 10, 10], [5, 5, 5, 9], [7, 3, 7, 3], [60, 0, 60, 0]], [0.9, 0.8, 0.7, 0.6], [0, 1, 2, 0]
    )
    agree = DetectionAgreement()
    agree.update(ref, ref)
    report = agree.compute()
    assert report["matched_fraction"] == 1.0 and report["mean_iou"] == 1.0 and report["matched"] == 4
    # only identical ones: a zero-area box one pixel away still matches nothing
    moved = _dets([[0, 0, 10, 10], [6, 5, 6, 9]], [0.9, 0.8], [0, 1])
    assert match_detections(ref, moved)["matched"] == 1


def test_hand_made_matching():
    test = _dets(
        [
            [20, 20, 40, 42],  # ~ref 1 (IoU 20*20 / (20*22) = 0.909), label flipped
            [1, 0, 11, 10],  # ~ref 0 (IoU 90 / 110 = 0.818)
            [100, 100, 110, 110],  # matches nothing
        ],
        [0.75, 0.95, 0.5],
        [2, 0, 2],
    )
    m = match_detections(REF, test)
    assert (m["n_ref"], m["n_test"], m["matched"], m["label_flips"]) == (3, 3, 2, 1)
    assert m["iou_sum"] == pytest.approx(400 / 440 + 90 / 110, rel=1e-6)
    assert m["max_score_error"] == pytest.approx(0.05, abs=1e-6)
    assert m["score_error_sum"] == pytest.approx(0.1, abs=1e-6)
    assert match_detections(REF, test, iou_thresh=0.85)["matched"] == 1


def test_greedy_by_reference_score():
    """The higher-scoring reference box takes the contested test box, even if a lower one overlaps it more."""
    ref = _dets([[0, 0, 10, 10], [0, 0, 10, 11]], [0.5, 0.9], [0, 0])
    test = _dets([[0, 0, 10, 10]], [0.5], [0])
    m = match_detections(ref, test)
    assert m["matched"] == 1
    assert m["iou_sum"] == pytest.approx(100 / 110)  # matched to ref 1 (score 0.9), not the identical ref 0


def test_accumulator():
    agree = DetectionAgreement()
    empty = Detections.empty()
    agree.update(empty, empty)
    assert agree.compute()["matched_fraction"] == 1.0
    agree.update(REF, REF)  # 3 of 3
    shifted = _dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.8, 0.8], [0, 1])
    agree.update(REF, shifted)  # 2 matched of max(3, 2)
    agree.update(empty, shifted)  # 0 of 2
    r = agree.compute()
    assert r["matched_fraction"] == pytest.approx(5 / 8)
    assert r["mean_iou"] == pytest.approx(1.0)
    assert r["max_score_error"] == pytest.approx(0.1, abs=1e-6)
    assert r["mean_score_error"] == pytest.approx(0.1 / 5, abs=1e-6)
    assert (r["n_ref"], r["n_test"], r["label_flips"], r["matched"]) == (6, 7, 0, 5)


def test_invalid_threshold():
    with pytest.raises(ValueError, match="got 0"):
        DetectionAgreement(iou_thresh=0)

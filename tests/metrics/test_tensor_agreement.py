from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgefpn.metrics.tensors import SNR_CAP_DB, aggregate_agreement, tensor_agreement


def test_identical_tensors():
    ref = np.random.default_rng(0).normal(size=(2, 6, 40, 40)).astype(np.float32)
    a = tensor_agreement(ref, ref.copy())
    sums = a.pop("sums")
    assert sums["err_sq"] == 0.0 and sums["dot"] == pytest.approx(sums["ref_sq"])
    assert a == {
        "max_abs": 0.0,
        "mean_abs": 0.0,
        "cosine": pytest.approx(1.0),
        "snr_db": SNR_CAP_DB,
        "nonfinite": 0,
    }
    json.dumps(a, allow_nan=False)


def test_zero_tensors():
    z = np.zeros((3, 4), np.float32)
    a = tensor_agreement(z, z)
    assert a["cosine"] == 1.0 and a["snr_db"] == SNR_CAP_DB and a["max_abs"] == 0.0
    b = tensor_agreement(z, np.ones_like(z))
    assert b["cosine"] == 0.0 and b["snr_db"] == -SNR_CAP_DB and b["max_abs"] == 1.0


def test_perturbed_tensors():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=10_000)
    noise = rng.normal(size=10_000)
    small = tensor_agreement(ref, ref + 1e-3 * noise)
    large = tensor_agreement(ref, ref + 1e-1 * noise)
    assert small["snr_db"] == pytest.approx(60.0, abs=0.5)  # power ratio 1e6
    assert large["snr_db"] == pytest.approx(20.0, abs=0.5)
    assert large["cosine"] < small["cosine"] < 1.0
    assert small["max_abs"] < large["max_abs"]
    assert large["mean_abs"] == pytest.approx(0.1 * math.sqrt(2 / math.pi), rel=0.05)
    assert tensor_agreement(ref, -ref)["cosine"] == pytest.approx(-1.0)


def test_float16_test_tensor_is_compared_in_float64():
    ref = np.linspace(-4, 4, 1001, dtype=np.float32)
    a = tensor_agreement(ref, ref.astype(np.float16))
    assert 0 < a["max_abs"] <= 2e-3 and a["snr_db"] > 60


def test_nonfinite_values_are_counted_and_numbers_stay_finite():
    ref = np.arange(6, dtype=np.float32)
    test = ref.copy()
    test[1], test[4] = np.nan, np.inf
    a = tensor_agreement(ref, test)
    assert a["nonfinite"] == 2
    assert a["max_abs"] == 0.0 and a["snr_db"] == SNR_CAP_DB  # the finite rest agrees
    json.dumps(a, allow_nan=False)


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 2\)"):
        tensor_agreement(np.zeros((2, 3)), np.zeros((3, 2)))


def test_aggregate_is_worst_case():
    per_image = [
        {"max_abs": 0.1, "mean_abs": 0.01, "cosine": 0.999, "snr_db": 40.0, "nonfinite": 0},
        {"max_abs": 0.3, "mean_abs": 0.03, "cosine": 0.990, "snr_db": 30.0, "nonfinite": 2},
    ]
    agg = aggregate_agreement(per_image)
    assert agg == {
        "max_abs": 0.3,
        "mean_abs": pytest.approx(0.02),
        "cosine": 0.990,  # no sums: falls back to the worst image
        "snr_db": 30.0,
        "min_image_cosine": 0.990,
        "min_image_snr_db": 30.0,
        "nonfinite": 2,
    }
    with pytest.raises(ValueError):
        aggregate_agreement([])


def test_aggregate_cosine_is_split_wide_and_keeps_the_worst_image():
    rng = np.random.default_rng(1)
    big = rng.normal(size=(4,))
    tiny = np.array([1e-3, -1e-3, 2e-3, 0.0])
    per_image = [tensor_agreement(big, big + 0.01), tensor_agreement(tiny, tiny + 0.01)]
    agg = aggregate_agreement(per_image)
    assert agg["min_image_cosine"] < 0.6  # the near-zero image looks terrible on its own
    assert agg["cosine"] > 0.999  # but the engine's error over the split is small
    assert agg["min_image_cosine"] == min(a["cosine"] for a in per_image)
    scaled = aggregate_agreement([tensor_agreement(big, 1.5 * big)])
    assert scaled["cosine"] == pytest.approx(1.0) and scaled["snr_db"] < 10.0  # SNR sees scale

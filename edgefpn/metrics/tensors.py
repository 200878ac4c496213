"""Agreement of a raw output tensor with its reference (the first depth of ``check``)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SNR_CAP_DB", "aggregate_agreement", "tensor_agreement"]

# SNR of identical tensors is +inf; reported as this cap (and -cap for -inf) so reports stay valid JSON.
SNR_CAP_DB = 200.0


def tensor_agreement(ref: np.ndarray, test: np.ndarray) -> dict:
    """Compare ``test`` with ``ref`` (same shape), in float64 over the flattened tensors.

    Returns:
        ``max_abs`` and ``mean_abs`` error, ``cosine`` similarity (1.0 for two all-zero tensors),
        ``snr_db`` = 10 log10(sum(ref^2) / sum((ref - test)^2)) clipped to +-``SNR_CAP_DB``, and
        ``nonfinite``, the number of NaN / Inf values in ``test``. The other numbers are computed over
        the positions where both tensors are finite, so they stay finite: gate on ``nonfinite == 0``.
    """
    ref = np.asarray(ref)
    test = np.asarray(test)
    if ref.shape != test.shape:
        raise ValueError(f"ref and test must have the same shape, got {ref.shape} and {test.shape}")
    r = ref.astype(np.float64).ravel()
    t = test.astype(np.float64).ravel()
    finite_t = np.isfinite(t)
    nonfinite = int(t.size - np.count_nonzero(finite_t))
    both = finite_t & np.isfinite(r)
    if not both.all():
        r, t = r[both], t[both]
    err = np.abs(r - t)
    err_energy = float(np.dot(err, err))
    ref_energy = float(np.dot(r, r))
    return {
        "max_abs": float(err.max()) if err.size else 0.0,
        "mean_abs": float(err.mean()) if err.size else 0.0,
        "cosine": _cosine(r, t),
        "snr_db": _snr_db(ref_energy, err_energy),
        "nonfinite": nonfinite,
        # sums that let aggregate_agreement compute split-wide cosine and SNR
        "sums": {
            "dot": float(np.dot(r, t)),
            "ref_sq": ref_energy,
            "test_sq": float(np.dot(t, t)),
            "err_sq": err_energy,
        },
    }


def aggregate_agreement(per_image: list[dict]) -> dict:
    """One output over a whole split.

    ``cosine`` and ``snr_db`` are split-wide (the tensors of all images taken as one vector); the
    worst single image is kept beside them as ``min_image_cosine`` / ``min_image_snr_db``. Gates use
    the split-wide figures: on small maps (P7 is 2 x 2 at 256 px, four numbers per image) the worst
    image is one whose reference is near zero, where any rounding looks like a large angle.
    ``max_abs`` is the max, ``mean_abs`` the mean, ``nonfinite`` the sum over images.
    """
    if not per_image:
        raise ValueError(f"per_image must hold at least one result, got {per_image!r}")
    out = {
        "max_abs": max(float(a["max_abs"]) for a in per_image),
        "mean_abs": float(np.mean([a["mean_abs"] for a in per_image])),
        "min_image_cosine": min(float(a["cosine"]) for a in per_image),
        "min_image_snr_db": min(float(a["snr_db"]) for a in per_image),
        "nonfinite": sum(int(a["nonfinite"]) for a in per_image),
    }
    if all("sums" in a for a in per_image):
        tot = {k: sum(float(a["sums"][k]) for a in per_image) for k in ("dot", "ref_sq", "test_sq", "err_sq")}
        na, nb = math.sqrt(tot["ref_sq"]), math.sqrt(tot["test_sq"])
        if na == 0.0 and nb == 0.0:
            cosine = 1.0
        elif na == 0.0 or nb == 0.0:
            cosine = 0.0
        else:
            cosine = float(np.clip(tot["dot"] / (na * nb), -1.0, 1.0))
        out["cosine"], out["snr_db"] = cosine, _snr_db(tot["ref_sq"], tot["err_sq"])
    else:  # results without sums (older callers): fall back to the worst image
        out["cosine"], out["snr_db"] = out["min_image_cosine"], out["min_image_snr_db"]
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = math.sqrt(float(np.dot(a, a))), math.sqrt(float(np.dot(b, b)))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def _snr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return SNR_CAP_DB
    if signal == 0.0:
        return -SNR_CAP_DB
    return float(np.clip(10.0 * math.log10(signal / noise), -SNR_CAP_DB, SNR_CAP_DB))

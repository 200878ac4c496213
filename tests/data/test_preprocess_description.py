"""The preprocessing description a bundle ships (``describe_preprocessing``), followed literally by a
device integrator, gives the pixels ``preprocess`` gives."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgefpn.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, describe_preprocessing, preprocess


@pytest.mark.parametrize("hw", [(61, 90), (300, 200), (96, 128), (7, 500)])
def test_following_the_description_gives_the_model_input(hw: tuple[int, int]) -> None:
    d = describe_preprocessing()
    H, W = 96, 128  # noqa: N806 (the description's names)
    h, w = hw
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    env = {"H": H, "W": W, "h": h, "w": w, "min": min, "max": max, "round": round}
    scale = eval(d["scale"], {}, env)  # noqa: S307 (our own constant strings)
    new_w = eval(d["new_w"], {}, {**env, "scale": scale})  # noqa: S307
    new_h = eval(d["new_h"], {}, {**env, "scale": scale})  # noqa: S307
    resized = image
    if not eval(d["resize"]["skipped_when"], {}, {"new_w": new_w, "new_h": new_h, "w": w, "h": h}):  # noqa: S307
        resized = eval(d["resize"]["call"], {"cv2": cv2}, {"image": image, "new_w": new_w, "new_h": new_h})  # noqa: S307
    assert d["channel_order"] == "RGB" and d["placement"] == "top-left" and d["pad_value"] == 0.0
    want = np.zeros((1, 3, H, W), np.float32)
    x = resized.astype(np.float32)
    mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)
    norm = eval(d["normalise"], {}, {"x": x, "mean": mean, "std": std})  # noqa: S307
    want[0, :, :new_h, :new_w] = norm.transpose(2, 0, 1)
    got, _ = preprocess(image, size=(H, W), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    # the resize is exact (the same call); normalisation may differ by float32 rounding order only
    np.testing.assert_allclose(got, want[0], rtol=0, atol=1e-5)
    assert (got[:, new_h:, :] == 0).all() and (got[:, :, new_w:] == 0).all()

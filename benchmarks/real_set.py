"""A COCO-format set of real photographs with small objects, for benchmarks/train_recipe.md.

Every pixel comes from photographs shipped inside registry packages (nothing is downloaded at run
time; the packages are benchmark-only, never edgefpn dependencies):

* objects (one class each): scikit-image's ``astronaut``, ``chelsea`` (a cat), ``coffee``, ``rocket``,
  ``motorcycle_left``; scikit-learn's ``flower``; matplotlib's ``grace_hopper``;
* backgrounds: scikit-image's ``hubble_deep_field``, ``retina``, ``ihc``, ``brick``, ``grass``,
  ``gravel``, ``moon``, ``camera``, ``cell``, ``coins``; scikit-learn's ``china``.

Each image is a random crop of a background photo, resized to a random non-square size (W 320..512,
H 240..384), with 2..8 object instances pasted at random places: an instance is a random window
(50..100 % of each side) of its class's photo, resized so that its longer side is 10..56 px (small
objects), mirrored at random; its box is the pasted rectangle. Instances overlap little (IoU < 0.2).
The split seeds differ, so val instances are new windows and scales of the same photos.

    uv pip install --target /tmp/skimage_pkg --no-deps scikit-image   # the photos (14 MB wheel)
    .venv/bin/python benchmarks/real_set.py --skimage-data /tmp/skimage_pkg/skimage/data --out data/real

scikit-learn and matplotlib are in edgefpn's environment already (dependencies of its dependencies).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

OBJECTS = {  # class -> (package, file)
    "astronaut": ("skimage", "astronaut.png"),
    "cat": ("skimage", "chelsea.png"),
    "coffee": ("skimage", "coffee.png"),
    "rocket": ("skimage", "rocket.jpg"),
    "motorcycle": ("skimage", "motorcycle_left.png"),
    "flower": ("sklearn", "flower.jpg"),
    "person": ("matplotlib", "grace_hopper.jpg"),
}
BACKGROUNDS = [
    ("skimage", f)
    for f in (
        "hubble_deep_field.jpg",
        "retina.jpg",
        "ihc.png",
        "brick.png",
        "grass.png",
        "gravel.png",
        "moon.png",
        "camera.png",
        "cell.png",
        "coins.png",
    )
]
BACKGROUNDS.append(("sklearn", "china.jpg"))
SPLITS = {"train": (700, 1), "val": (150, 2), "calib": (100, 3)}  # name -> (images, seed)


def _package_dir(package: str, skimage_data: Path) -> Path:
    if package == "skimage":
        return skimage_data
    if package == "sklearn":
        import sklearn

        return Path(sklearn.__file__).parent / "datasets" / "images"
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data"


def _load(package: str, name: str, skimage_data: Path) -> np.ndarray:
    path = _package_dir(package, skimage_data) / name
    if not path.is_file():
        raise SystemExit(f"error: {path}: photo not found (install the package that ships it, see --help)")
    return np.asarray(Image.open(path).convert("RGB"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _image(rng: np.random.Generator, objects: list[np.ndarray], backgrounds: list[np.ndarray]):
    w, h = int(rng.integers(320, 513)), int(rng.integers(240, 385))
    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    bh, bw = bg.shape[:2]
    # a background window with the canvas's aspect ratio, 40..100 % of the photo's fitting size
    fit = min(bw / w, bh / h) * rng.uniform(0.4, 1.0)
    cw, ch = max(16, int(w * fit)), max(16, int(h * fit))
    x0, y0 = int(rng.integers(0, bw - cw + 1)), int(rng.integers(0, bh - ch + 1))
    canvas = cv2.resize(bg[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_AREA).copy()
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(2, 9))):
        label = int(rng.integers(len(objects)))
        src = objects[label]
        sh, sw = src.shape[:2]
        ww, wh = int(sw * rng.uniform(0.5, 1.0)), int(sh * rng.uniform(0.5, 1.0))
        sx, sy = int(rng.integers(0, sw - ww + 1)), int(rng.integers(0, sh - wh + 1))
        patch = src[sy : sy + wh, sx : sx + ww]
        side = rng.uniform(10, 56)
        k = side / max(ww, wh)
        pw, ph = max(4, round(ww * k)), max(4, round(wh * k))
        patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        px, py = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
        box = np.array([px, py, px + pw, py + ph], np.float64)
        if any(_iou(box, b) > 0.2 for b in boxes):
            continue
        canvas[py : py + ph, px : px + pw] = patch
        boxes.append(box)
        labels.append(label)
    return canvas, boxes, labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skimage-data", type=Path, required=True, help="scikit-image's skimage/data folder")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"error: {args.out}: exists; choose a new folder")
    objects = [_load(p, f, args.skimage_data) for p, f in OBJECTS.values()]
    backgrounds = [_load(p, f, args.skimage_data) for p, f in BACKGROUNDS]
    (args.out / "images").mkdir(parents=True)
    (args.out / "annotations").mkdir()
    categories = [{"id": i + 1, "name": n, "supercategory": "photo"} for i, n in enumerate(OBJECTS)]
    for split, (count, seed) in SPLITS.items():
        rng = np.random.default_rng(seed)
        images, anns = [], []
        for i in range(count):
            canvas, boxes, labels = _image(rng, objects, backgrounds)
            name = f"{split}_{i:06d}.jpg"
            Image.fromarray(canvas).save(args.out / "images" / name, quality=90)
            images.append(
                {"id": i + 1, "file_name": name, "width": canvas.shape[1], "height": canvas.shape[0]}
            )
            for b, lab in zip(boxes, labels, strict=True):
                bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": lab + 1,
                        "iscrowd": 0,
                        "bbox": [float(b[0]), float(b[1]), bw, bh],
                        "area": bw * bh,
                    }
                )
        doc = {
            "info": {"description": f"edgefpn real-photo small objects, split {split}", "version": "1"},
            "images": images,
            "annotations": anns,
            "categories": categories,
        }
        (args.out / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
        print(f"{split}: {count} images, {len(anns)} objects")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

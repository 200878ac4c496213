import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import edgefpn.data.images as images
import edgefpn.data.preprocess as pp
from edgefpn.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Letterbox,
    boxes_to_input,
    boxes_to_original,
    letterbox,
    load_image,
    normalize,
    preprocess,
    preprocess_file,
)
from edgefpn.errors import DataError


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (100, 100), (37, 500)])
def test_preprocess_dtype_shape_contiguity(hw):
    x, lb = preprocess(_image(*hw), size=(320, 256), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert x.shape == (3, 320, 256)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    assert (lb.orig_h, lb.orig_w) == hw
    assert (lb.pad_x, lb.pad_y) == (0, 0)
    assert lb.scale == pytest.approx(min(320 / hw[0], 256 / hw[1]))


def test_padding_is_exactly_zero_and_image_sits_top_left():
    image = np.full((50, 100, 3), 255, dtype=np.uint8)  # white, wide: fills the top 160 rows
    x, lb = preprocess(image, size=(320, 320), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert lb.scale == pytest.approx(3.2)
    assert np.all(x[:, 160:, :] == 0.0)
    white = (1.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(x[:, :160, :], np.broadcast_to(white[:, None, None], (3, 160, 320)), rtol=1e-6)


def test_padding_zero_for_any_mean_std():
    x, _ = preprocess(_image(30, 90), size=(64, 64), mean=(0.1, 0.9, 0.5), std=(0.3, 0.2, 1.5))
    assert np.all(x[:, 21:, :] == 0.0)
    assert np.count_nonzero(x[:, :21, :]) > 0


def test_normalize_formula():
    image = _image(7, 9)
    out = normalize(image, IMAGENET_MEAN, IMAGENET_STD)
    ref = ((image / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)).transpose(2, 0, 1)
    assert out.shape == (3, 7, 9) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_preprocess_equals_normalized_letterbox_inside_the_image():
    image = _image(240, 400)
    x, lb = preprocess(image, size=(128, 128), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    boxed, lb2 = letterbox(image, (128, 128))
    assert lb == lb2
    assert boxed.shape == (128, 128, 3) and boxed.dtype == np.uint8
    np.testing.assert_array_equal(x[:, :77, :], normalize(boxed, IMAGENET_MEAN, IMAGENET_STD)[:, :77, :])


def test_box_round_trip():
    lb = Letterbox(scale=0.5, pad_x=0, pad_y=0, orig_w=640, orig_h=480)
    boxes = np.array([[0, 0, 640, 480], [10.5, 20.25, 30, 400], [600, 1, 639, 2]], dtype=np.float32)
    inp = boxes_to_input(boxes, lb)
    np.testing.assert_allclose(inp[0], [0, 0, 320, 240])
    np.testing.assert_allclose(boxes_to_original(inp, lb), boxes, rtol=1e-6)


def test_box_round_trip_with_padding_and_clipping():
    lb = Letterbox(scale=2.0, pad_x=3, pad_y=5, orig_w=100, orig_h=50)
    boxes = np.array([[1, 2, 50, 49]], dtype=np.float32)
    inp = boxes_to_input(boxes, lb)
    np.testing.assert_allclose(inp, [[5, 9, 103, 103]])
    np.testing.assert_allclose(boxes_to_original(inp, lb), boxes)
    out = boxes_to_original(np.array([[-50, -50, 1000, 1000]], dtype=np.float32), lb)
    np.testing.assert_allclose(out, [[0, 0, 100, 50]])


def test_boxes_empty_and_bad_shape():
    lb = Letterbox(scale=1.0, pad_x=0, pad_y=0, orig_w=10, orig_h=10)
    assert boxes_to_input(np.zeros((0, 4)), lb).shape == (0, 4)
    with pytest.raises(ValueError, match=r"\[3\]"):
        boxes_to_input(np.zeros(3), lb)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": (0, 320)}, r"\(0, 320\)"),
        ({"size": (320,)}, r"\(320,\)"),
        ({"size": (320, 320), "std": (0.2, 0.0, 0.2)}, r"0\.0"),
        ({"size": (320, 320), "mean": (0.5, 0.5)}, r"\(0\.5, 0\.5\)"),
    ],
)
def test_preprocess_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        preprocess(_image(10, 10), **{"mean": IMAGENET_MEAN, "std": IMAGENET_STD, **kwargs})


@pytest.mark.parametrize(
    "image",
    [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32)],
)
def test_preprocess_rejects_bad_images(image):
    with pytest.raises(ValueError, match="image"):
        preprocess(image, size=(32, 32))


def test_load_image_missing(tmp_path):
    with pytest.raises(DataError, match="nope.jpg: image file not found"):
        load_image(tmp_path / "nope.jpg")


def test_load_image_zero_byte(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg: empty file"):
        load_image(p)


def test_load_image_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("definitely not a JPEG\n" * 10)
    with pytest.raises(DataError, match=r"notes\.jpg: not an image"):
        load_image(p)


def test_load_image_truncated(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_image(64, 64)).save(buf, format="JPEG", quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: cannot decode"):
        load_image(p)


def test_load_image_decompression_bomb(tmp_path, monkeypatch):
    p = tmp_path / "bomb.png"
    Image.new("RGB", (40, 40)).save(p)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # our own limit still holds
    with pytest.raises(DataError, match=r"bomb\.png: .*decompression bomb"):
        load_image(p)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "1", "LA"])
def test_load_image_converts_modes_to_rgb(tmp_path, mode):
    if mode == "I;16":
        im = Image.fromarray(np.full((6, 5), 0x8000, dtype=np.uint16))
        assert im.mode == "I;16"
    else:
        im = Image.fromarray(_image(6, 5)).convert(mode)
    p = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(p)
    out = load_image(p)
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
    assert out.flags.writeable
    if mode == "I;16":
        assert np.all(out == 0x80)


def test_load_image_keeps_stored_geometry(tmp_path):
    # EXIF orientation 6 (rotate 90) must NOT be applied: COCO boxes refer to stored pixels.
    im = Image.fromarray(_image(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif)
    assert load_image(p).shape == (20, 40, 3)


@pytest.mark.parametrize(
    "save", [{"quality": 90}, {"quality": 75, "subsampling": 0}, {"quality": 95, "progressive": True}]
)
def test_colour_jpeg_decodes_to_pillows_pixels(tmp_path, save):
    # Colour JPEGs are decoded by OpenCV for speed; the pixels must be Pillow's, bit for bit.
    p = tmp_path / "x.jpg"
    Image.fromarray(_image(61, 83, seed=3)).save(p, format="JPEG", **save)
    out = load_image(p)
    with Image.open(p) as im:
        np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))
    assert out.flags.writeable and out.flags.c_contiguous


@pytest.mark.parametrize("cut", [2, 200])
def test_colour_jpeg_missing_its_tail_is_refused(tmp_path, cut):
    buf = io.BytesIO()
    Image.fromarray(_image(64, 64)).save(buf, format="JPEG", quality=90)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[:-cut])
    with pytest.raises(DataError, match=r"cut\.jpg: cannot decode"):
        load_image(p)


def _jpeg_bytes(h: int = 40, w: int = 56, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_image(h, w, seed=h)).save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def test_jpeg_frame_header_is_read_without_pillow():
    data = _jpeg_bytes(40, 56)
    assert images._jpeg_frame(data) == (40, 56, 3)
    assert images._jpeg_frame(_jpeg_bytes(40, 56, exif=Image.Exif())) == (40, 56, 3)  # past an APP1 segment
    grey = io.BytesIO()
    Image.fromarray(_image(8, 8)[:, :, 0]).save(grey, format="JPEG")
    assert images._jpeg_frame(grey.getvalue()) is None  # 1 component: Pillow's path
    png = io.BytesIO()
    Image.fromarray(_image(8, 8)).save(png, format="PNG")
    for other in (png.getvalue(), b"", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00\x01", data[:20]):
        assert images._jpeg_frame(other) is None


def test_jpeg_decompression_bomb_refused_from_its_header(tmp_path, monkeypatch):
    p = tmp_path / "bomb.jpg"
    p.write_bytes(_jpeg_bytes(40, 40))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    decoded = []
    monkeypatch.setattr(images, "_decode_jpeg_rgb", lambda *a: decoded.append(a))
    with pytest.raises(DataError, match=r"bomb\.jpg: image is 40x40 pixels.*decompression bomb"):
        load_image(p)
    assert not decoded


def test_frame_header_past_the_scanned_head_takes_pillows_path(tmp_path):
    # a 70 KB ICC profile segment pushes the frame header past the first 64 KiB
    p = tmp_path / "icc.jpg"
    p.write_bytes(_jpeg_bytes(33, 47, icc_profile=bytes(70_000)))
    assert images._jpeg_frame(p.read_bytes()[: images._JPEG_HEAD_BYTES]) is None
    with Image.open(p) as im:
        np.testing.assert_array_equal(load_image(p), np.asarray(im.convert("RGB")))


def test_jpeg_with_a_huge_tail_is_not_read_whole(tmp_path, monkeypatch):
    # 40x56 pixels followed by 1 MB of junk: Pillow's streaming decoder takes it, OpenCV never sees it
    p = tmp_path / "tail.jpg"
    p.write_bytes(_jpeg_bytes(40, 56) + bytes(1 << 20))
    decoded = []
    monkeypatch.setattr(images, "_decode_jpeg_rgb", lambda *a: decoded.append(a))
    assert load_image(p).shape == (40, 56, 3)
    assert not decoded


def test_damaged_jpegs_decode_or_raise_data_error(tmp_path):
    # flipped bytes and cut tails anywhere, headers included: an image or a DataError, nothing else
    data = _jpeg_bytes(48, 64)
    rng = np.random.default_rng(0)
    p = tmp_path / "d.jpg"
    outcomes = set()
    for i in range(150):
        b = bytearray(data)
        if i % 3 == 0:
            b = b[: int(rng.integers(1, len(b)))]
        else:
            for pos in rng.integers(0, len(b), 1 + i % 5):
                b[pos] = int(rng.integers(0, 256))
        p.write_bytes(bytes(b))
        try:
            out = load_image(p)
        except DataError as e:
            assert str(e).startswith(f"{p}: ")
            outcomes.add("error")
        else:
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
            outcomes.add("image")
    assert outcomes == {"error", "image"}


@pytest.mark.parametrize("hw", [(310, 274), (100, 60), (257, 1000)])
def test_resize_is_half_pixel_bilinear(hw):
    # The resize is plain bilinear with pixel centres at +0.5 (what torch's interpolate computes with
    # align_corners=False and no antialias), up to OpenCV's fixed-point rounding: one uint8 level.
    import torch
    import torch.nn.functional as F

    image = _image(*hw, seed=7)
    boxed, lb = letterbox(image, (256, 256))
    new_h, new_w = round(hw[0] * lb.scale), round(hw[1] * lb.scale)
    ref = (
        F.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None].double(),
            size=(new_h, new_w),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    diff = np.abs(boxed[:new_h, :new_w].astype(np.float64) - ref)
    assert diff.max() <= 1.0, diff.max()


@pytest.mark.parametrize(
    ("hw", "fmt", "mode"),
    [
        ((310, 274), "JPEG", "RGB"),  # downscale, the default run's case
        ((100, 60), "JPEG", "RGB"),  # upscale
        ((128, 96), "PNG", "RGB"),  # width already fits: no resize on that side
        ((160, 160), "PNG", "RGB"),  # exactly the input size: no resize at all
        ((90, 70), "JPEG", "L"),  # grey JPEG: the general path
        ((90, 70), "PNG", "RGBA"),
        ((90, 70), "PNG", "P"),
    ],
)
def test_preprocess_file_is_bit_identical_to_load_then_preprocess(tmp_path, hw, fmt, mode):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(_image(*hw, seed=hw[0])).convert(mode).save(path, format=fmt)
    stats = {"mean": (0.1, 0.9, 0.5), "std": (0.3, 0.2, 1.5)}
    expected, lb_expected = preprocess(load_image(path), size=(160, 128), **stats)
    got, lb = preprocess_file(path, size=(160, 128), **stats)
    assert lb == lb_expected
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable
    np.testing.assert_array_equal(got, expected)


def test_preprocess_file_reports_file_problems_like_load_image(tmp_path):
    with pytest.raises(DataError, match="nope.jpg: image file not found"):
        preprocess_file(tmp_path / "nope.jpg", size=(32, 32))
    p = tmp_path / "notes.jpg"
    p.write_text("definitely not a JPEG\n")
    with pytest.raises(DataError, match=r"notes\.jpg: not an image"):
        preprocess_file(p, size=(32, 32))
    with pytest.raises(ValueError, match=r"\(0\.5, 0\.5\)"):
        preprocess_file(p, size=(32, 32), mean=(0.5, 0.5))


def test_affine_is_cached_and_read_only():
    a = pp._stats_affine((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    assert a is pp._stats_affine((0.1, 0.2, 0.3), (1.0, 1.0, 1.0))
    assert not a.flags.writeable
    with pytest.raises(ValueError, match="std"):
        pp._stats_affine((0.1, 0.2, 0.3), (1.0, float("nan"), 1.0))


def test_preprocess_module_imports_without_torch():
    code = (
        "import sys; import edgefpn.data.preprocess, edgefpn.data.images, edgefpn.data.coco, edgefpn.data; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_file_reading_is_reexported_as_the_same_objects():
    # old import paths keep working, and the end-to-end path gets no wrapper layer around load_image
    for name in ("load_image", "image_size", "MAX_IMAGE_PIXELS"):
        assert name in pp.__all__ and getattr(pp, name) is getattr(images, name)

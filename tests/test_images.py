"""Tests for featx.images: decoding, colour modes, geometry, bad files, bombs."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin

from featx import images
from featx.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageError,
    file_sha1,
    is_image_name,
    load_image,
    try_load_image,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


# -- helpers -------------------------------------------------------------------
def save(image: Image.Image, path, **options) -> str:
    image.save(path, **options)
    return str(path)


def mean_colour(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(-1, 3).mean(axis=0)


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """A smooth, non-uniform photo stand-in (gradients and slow waves)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 127 + 100 * np.sin(x / width * 3 * np.pi)
    green = 255 * y / height
    blue = 127 + 100 * np.cos((x + y) / (width + height) * 4 * np.pi)
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)


def png_header_only(path, width: int, height: int) -> str:
    """A PNG that declares width x height but carries only a few bytes of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + body)
    return str(path)


def left_red_right_blue(width: int, height: int) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = RED
    pixels[:, width // 2 :] = BLUE
    return Image.fromarray(pixels)


# -- names -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, expected",
    [
        ("cat.1.jpg", True),
        ("DOG.2.JPEG", True),
        ("a/b/scan.TiF", True),
        ("x.webp", True),
        ("anim.Gif", True),
        ("notes.txt", False),
        ("jpg", False),
        ("archive.jpg.zip", False),
    ],
)
def test_is_image_name_by_extension_case_insensitive(name, expected):
    assert is_image_name(name) is expected
    assert is_image_name(os.path.join("folder", name)) is expected


def test_extensions_are_lower_case_with_dot():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"} == IMAGE_EXTENSIONS
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485


# -- formats ---------------------------------------------------------------------
@pytest.mark.parametrize("extension, tolerance", [
    ("jpg", 4), ("png", 0), ("bmp", 0), ("webp", 4), ("gif", 0), ("tif", 0), ("tiff", 0),
])
def test_each_format_round_trips_shape_and_colour(tmp_path, extension, tolerance):
    path = save(Image.new("RGB", (40, 30), RED), tmp_path / f"red.{extension}")
    pixels = load_image(path)
    assert pixels.shape == (30, 40, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous
    assert np.abs(pixels.astype(int) - RED).max() <= tolerance


def test_format_is_read_from_content_not_extension(tmp_path):
    path = save(Image.new("RGB", (12, 10), BLUE), tmp_path / "really_a_png.jpg", format="PNG")
    assert load_image(path)[0, 0].tolist() == list(BLUE)


def test_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 8), RED), Image.new("RGB", (16, 8), BLUE)]
    path = save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(path).n_frames == 2
    assert load_image(path)[4, 8].tolist() == list(RED)


# -- colour modes ---------------------------------------------------------------------
def palette_image(transparent_index: int | None) -> Image.Image:
    indices = np.zeros((6, 8), np.uint8)
    indices[:, 4:] = 1  # left: index 0 (red), right: index 1 (blue)
    image = Image.fromarray(indices, mode="L").convert("P")
    image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


@pytest.mark.parametrize(
    "name, make, extension, left, right",
    [
        ("L", lambda: Image.new("L", (8, 6), 82), "png", (82,) * 3, (82,) * 3),
        ("1", lambda: Image.new("1", (8, 6), 1), "png", WHITE, WHITE),
        ("I;16", lambda: Image.new("I;16", (8, 6), 40000), "png", (156,) * 3, (156,) * 3),
        ("I;16 tiff", lambda: Image.new("I;16", (8, 6), 51400), "tif", (200,) * 3, (200,) * 3),
        ("I 16-bit values", lambda: Image.new("I", (8, 6), 51400), "tif", (200,) * 3, (200,) * 3),
        ("I 8-bit values", lambda: Image.new("I", (8, 6), 77), "tif", (77,) * 3, (77,) * 3),
        ("F in 0..1", lambda: Image.new("F", (8, 6), 0.25), "tif", (64,) * 3, (64,) * 3),
        ("F in 0..255", lambda: Image.new("F", (8, 6), 99.6), "tif", (100,) * 3, (100,) * 3),
        ("P", lambda: palette_image(None), "png", RED, BLUE),
        ("P transparent png", lambda: palette_image(1), "png", RED, WHITE),
        ("P transparent gif", lambda: palette_image(0), "gif", WHITE, BLUE),
        ("CMYK tiff", lambda: Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "tif", RED, RED),
        ("LA opaque", lambda: Image.new("LA", (8, 6), (82, 255)), "png", (82,) * 3, (82,) * 3),
        ("LA clear", lambda: Image.new("LA", (8, 6), (82, 0)), "png", WHITE, WHITE),
        ("RGBA half", lambda: Image.new("RGBA", (8, 6), (255, 0, 0, 128)), "png",
         (255, 127, 127), (255, 127, 127)),
        ("RGBA webp clear", lambda: Image.new("RGBA", (8, 6), (0, 0, 255, 0)), "webp", WHITE, WHITE),
    ],
)
def test_every_mode_becomes_rgb_uint8(tmp_path, name, make, extension, left, right):
    source = make()
    path = save(source, tmp_path / f"image.{extension}", **({"lossless": True} if extension == "webp" else {}))
    pixels = load_image(path)
    assert pixels.shape == (6, 8, 3) and pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    assert np.abs(pixels[:, :4].astype(int) - left).max() <= 1, (name, Image.open(path).mode)
    assert np.abs(pixels[:, 4:].astype(int) - right).max() <= 1, (name, Image.open(path).mode)


def test_wide_integer_gray_is_stretched_to_full_range(tmp_path):
    values = np.linspace(-70000, 500000, 8 * 6).reshape(6, 8).astype(np.int32)
    path = save(Image.fromarray(values, mode="I"), tmp_path / "wide.tif")
    pixels = load_image(path)
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.all(np.diff(pixels[..., 0].ravel().astype(int)) >= 0)  # order kept


def test_rgb_png_with_transparent_colour_key_is_white(tmp_path):
    pixels = np.zeros((6, 8, 3), np.uint8)
    pixels[:, :4] = RED
    pixels[:, 4:] = (0, 255, 0)
    path = save(Image.fromarray(pixels), tmp_path / "key.png", transparency=(0, 255, 0))
    loaded = load_image(path)
    assert loaded[:, :4].reshape(-1, 3).tolist() == [list(RED)] * 24
    assert loaded[:, 4:].reshape(-1, 3).tolist() == [list(WHITE)] * 24


def test_cmyk_and_grayscale_jpeg(tmp_path):
    cmyk = save(Image.new("CMYK", (32, 24), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    gray = save(Image.new("L", (32, 24), 90), tmp_path / "gray.jpg", quality=95)
    assert np.abs(mean_colour(load_image(cmyk)) - RED).max() < 4
    for size in (None, 8):
        pixels = load_image(gray, size=size)
        assert pixels.shape[2] == 3
        assert np.abs(pixels.astype(int) - 90).max() <= 2


# -- EXIF orientation ---------------------------------------------------------------
def test_jpeg_exif_orientation_6_is_rotated_clockwise(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(left_red_right_blue(40, 20), tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    pixels = load_image(path)
    assert pixels.shape == (40, 20, 3)  # width and height swapped
    # Rotating clockwise puts the stored left (red) half on top.
    assert np.abs(mean_colour(pixels[:15]) - RED).max() < 6
    assert np.abs(mean_colour(pixels[25:]) - BLUE).max() < 6
    resized = load_image(path, size=(10, 6))
    assert resized.shape == (10, 6, 3)
    assert np.abs(mean_colour(resized[:3]) - RED).max() < 6


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil_exif_transpose(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(Image.fromarray(pixels), tmp_path / "o.png", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert np.array_equal(load_image(path), expected)
    # Resizing happens before the rotation; the result matches rotate-then-resize.
    target = (23, 17)
    expected_small = cv2.resize(expected, target[::-1], interpolation=cv2.INTER_LINEAR)
    small = load_image(path, size=target, interpolation="linear")
    assert small.shape == (23, 17, 3)
    assert np.abs(small.astype(int) - expected_small).max() <= 1


# -- geometry --------------------------------------------------------------------------
@pytest.fixture
def smooth_png(tmp_path) -> str:
    return save(Image.fromarray(smooth_rgb(90, 120)), tmp_path / "smooth.png")


@pytest.mark.parametrize("size, shape", [
    ((40, 70), (40, 70, 3)), ([40, 70], (40, 70, 3)), (32, (32, 32, 3)),
    (np.int64(16), (16, 16, 3)), ((180, 240), (180, 240, 3)), (None, (90, 120, 3)),
])
def test_resize_to_height_width_or_square(smooth_png, size, shape):
    pixels = load_image(smooth_png, size=size)
    assert pixels.shape == shape and pixels.flags.c_contiguous


@pytest.mark.parametrize("interpolation", sorted(images.INTERPOLATIONS))
def test_each_interpolation_resizes_like_opencv(smooth_png, interpolation):
    original = load_image(smooth_png)
    expected = cv2.resize(original, (50, 30), interpolation=images.INTERPOLATIONS[interpolation])
    assert np.array_equal(load_image(smooth_png, size=(30, 50), interpolation=interpolation), expected)


def test_keep_aspect_crops_the_centre_instead_of_squashing(tmp_path):
    stripes = np.zeros((100, 200, 3), np.uint8)
    stripes[:, :50] = RED
    stripes[:, 50:150] = (0, 255, 0)
    stripes[:, 150:] = BLUE
    path = save(Image.fromarray(stripes), tmp_path / "stripes.png")

    cropped = load_image(path, size=50, keep_aspect=True)
    assert cropped.shape == (50, 50, 3)
    assert cropped.reshape(-1, 3).tolist() == [[0, 255, 0]] * 2500

    squashed = load_image(path, size=50, keep_aspect=False)
    assert squashed[:, 0].tolist() == [list(RED)] * 50
    assert squashed[:, -1].tolist() == [list(BLUE)] * 50

    # Portrait target from a landscape image: keep the middle 50 columns of 100 rows.
    tall = load_image(path, size=(100, 50), keep_aspect=True)
    assert tall.shape == (100, 50, 3)
    assert tall.reshape(-1, 3).tolist() == [[0, 255, 0]] * 5000


def test_equalize_stretches_low_contrast_to_full_range(tmp_path):
    gradient = np.tile(np.linspace(100, 140, 64).astype(np.uint8), (48, 1))
    low_contrast = np.stack([gradient, gradient[:, ::-1], np.full_like(gradient, 120) + (gradient > 120)], -1)
    path = save(Image.fromarray(low_contrast), tmp_path / "flat.png")
    plain = load_image(path, size=(24, 32))
    assert plain.max() - plain.min() <= 41
    equalized = load_image(path, size=(24, 32), equalize=True)
    for channel in range(3):
        assert equalized[..., channel].min() <= 10, channel
        assert equalized[..., channel].max() == 255, channel
    # Same per-channel operation OpenCV does, after the resize.
    expected = np.stack([cv2.equalizeHist(np.ascontiguousarray(plain[..., c])) for c in range(3)], -1)
    assert np.array_equal(equalized, expected)


# -- JPEG draft decoding --------------------------------------------------------------------
@pytest.fixture
def draft_spy(monkeypatch):
    """Record the size each JPEG is decoded at once Image.draft has run."""
    decoded_sizes: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return decoded_sizes


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("draft") / "large.jpg"
    return save(Image.fromarray(smooth_rgb(1800, 2400)), path, quality=92)


def test_draft_decode_is_close_to_full_decode(large_jpeg, draft_spy):
    fast = load_image(large_jpeg, size=224)
    assert draft_spy == [(300, 225)]  # 1/8 scale: smallest DCT scale still >= 224 x 224
    full = load_image(large_jpeg, size=224, draft=False)
    assert draft_spy == [(300, 225)]  # draft=False never asks for a reduced decode
    assert fast.shape == full.shape == (224, 224, 3)
    assert np.abs(fast.astype(int) - full).mean() < 3


@pytest.mark.parametrize("size, keep_aspect, orientation, decoded", [
    ((224, 224), False, 1, (300, 225)),   # 1/8
    ((224, 224), True, 1, (300, 225)),    # 1/8: the 225 x 225 centre covers 224 x 224
    ((400, 300), True, 1, (600, 450)),    # 1/4
    ((700, 500), False, 1, (1200, 900)),  # 1/2: 1800 / 4 = 450 rows would be too few
    ((500, 700), False, 6, (1200, 900)),  # rotated: the 700 columns are stored as rows
    ((900, 300), True, 8, (1200, 900)),
    ((1000, 1000), False, 1, (2400, 1800)),  # less than 2x smaller: full decode
])
def test_draft_picks_the_smallest_scale_still_covering_the_target(
    tmp_path, draft_spy, size, keep_aspect, orientation, decoded
):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(Image.fromarray(smooth_rgb(1800, 2400)), tmp_path / "big.jpg", exif=exif.tobytes())
    pixels = load_image(path, size=size, keep_aspect=keep_aspect)
    assert pixels.shape == (*size, 3)
    assert draft_spy == [decoded]
    decoded_width, decoded_height = decoded
    if orientation in (5, 6, 7, 8):
        decoded_width, decoded_height = decoded_height, decoded_width
    assert decoded_height >= size[0] and decoded_width >= size[1]


# -- bad files ---------------------------------------------------------------------------------
def make_zero_byte(folder):
    path = folder / "empty.jpg"
    path.touch()
    return str(path)


def make_text_as_jpeg(folder):
    path = folder / "notes.jpg"
    path.write_text("this is not a picture\n")
    return str(path)


def make_truncated(folder, extension):
    path = folder / f"cut.{extension}"
    full = folder / f"full.{extension}"
    Image.fromarray(smooth_rgb(120, 160)).save(full)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def make_damaged_png_header(folder):
    path = folder / "damaged.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return str(path)


def make_corrupt_png_data(folder):
    path = folder / "corrupt.png"
    Image.fromarray(smooth_rgb(60, 80)).save(path)
    data = bytearray(path.read_bytes())
    data[100:160] = b"x" * 60  # inside the compressed pixel stream
    path.write_bytes(bytes(data))
    return str(path)


def make_directory(folder):
    path = folder / "folder.jpg"
    path.mkdir()
    return str(path)


@pytest.mark.parametrize("make, reason", [
    (make_zero_byte, "zero-byte file"),
    (make_text_as_jpeg, "not an image (expected JPEG, PNG, BMP, WebP, GIF or TIFF content)"),
    (lambda folder: make_truncated(folder, "jpg"), "truncated JPEG"),
    (lambda folder: make_truncated(folder, "png"), "truncated PNG"),
    (lambda folder: make_truncated(folder, "webp"), "truncated WEBP"),
    (make_damaged_png_header, "corrupt PNG header"),
    (make_corrupt_png_data, "corrupt PNG: "),
    (lambda folder: str(folder / "missing.jpg"), "file not found"),
    (make_directory, "is a directory, not a file"),
])
@pytest.mark.parametrize("size", [None, 32])
def test_every_bad_file_raises_image_error_with_reason(tmp_path, make, reason, size):
    path = make(tmp_path)
    with pytest.raises(ImageError) as caught:
        load_image(path, size=size)
    # "corrupt PNG: " is followed by zlib's own words, which vary with the damage.
    assert caught.value.reason == reason or (reason.endswith(": ") and caught.value.reason.startswith(reason))
    assert caught.value.path == path
    assert str(caught.value) == f"{path}: {caught.value.reason}"
    assert try_load_image(path, size=size) == (None, caught.value.reason)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg_is_never_returned_half_grey(tmp_path):
    full = save(Image.fromarray(smooth_rgb(240, 320)), tmp_path / "full.jpg", quality=90)
    data = open(full, "rb").read()
    for kept in (0.3, 0.6, 0.9, 0.99):
        cut = tmp_path / f"cut{kept}.jpg"
        cut.write_bytes(data[: int(len(data) * kept)])
        for size in (None, 40):  # full decode and draft decode alike
            assert try_load_image(str(cut), size=size) == (None, "truncated JPEG")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 000 files stay readable")
def test_unreadable_file_is_permission_denied(tmp_path):
    path = save(Image.new("RGB", (4, 4), RED), tmp_path / "locked.png")
    os.chmod(path, 0)
    try:
        assert try_load_image(path) == (None, "permission denied")
        with pytest.raises(ImageError, match="permission denied"):
            file_sha1(path)
    finally:
        os.chmod(path, 0o644)


def test_permission_error_from_the_os_is_reported(tmp_path, monkeypatch):
    """Same mapping as the chmod test, runnable as root: the OS refusal is simulated."""
    path = save(Image.new("RGB", (4, 4), RED), tmp_path / "locked.png")

    def refuse(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", file)

    monkeypatch.setattr(images, "open", refuse, raising=False)
    assert try_load_image(path) == (None, "permission denied")
    with pytest.raises(ImageError, match="permission denied"):
        file_sha1(path)


# -- decompression bombs ---------------------------------------------------------------------
def test_bomb_over_default_limit_is_refused_from_the_header(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 20_000, 20_000)
    # Decoding would have failed as "truncated PNG": the header alone decided.
    assert try_load_image(path) == (None, f"decompression bomb: 400000000 pixels > limit {DEFAULT_MAX_PIXELS}")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets filters
def test_bomb_under_pillow_limit_but_over_ours(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 10_000, 10_000)
    assert try_load_image(path, max_pixels=5_000_000) == (
        None, "decompression bomb: 100000000 pixels > limit 5000000")
    # Raising featx's limit lets the header through; the pixels are then missing.
    assert try_load_image(path, max_pixels=None) == (None, "truncated PNG")


def test_bomb_beyond_pillow_limit_says_how_to_allow_it(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 20_000, 20_000)
    image, reason = try_load_image(path, max_pixels=None)
    assert image is None
    assert reason.startswith("decompression bomb: 400000000 pixels > Pillow's limit 178956970")
    assert "PIL.Image.MAX_IMAGE_PIXELS" in reason


def test_small_real_image_over_a_lowered_limit(tmp_path):
    path = save(Image.new("RGB", (20, 10), RED), tmp_path / "small.png")
    assert try_load_image(path, max_pixels=100) == (None, "decompression bomb: 200 pixels > limit 100")
    assert load_image(path, max_pixels=200).shape == (10, 20, 3)


def test_pillow_bomb_warning_is_silenced(tmp_path):
    path = png_header_only(tmp_path / "big.png", 10_000, 10_000)  # between Pillow's warn and error
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images._silence_pillow_bomb_warnings()  # what importing featx.images does
        for _ in range(3):
            assert try_load_image(path, max_pixels=200_000_000) == (None, "truncated PNG")
    assert [str(w.message) for w in caught] == []


# -- arguments, hashing, concurrency -------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"size": 0}, "size must be positive"),
    ({"size": (10, 20, 30)}, "size must be None, an int or"),
    ({"size": (10.5, 20)}, "size must be None, an int or"),
    ({"size": True}, "size must be None, an int or"),
    ({"interpolation": "bilinear"}, "interpolation must be one of area, linear, cubic"),
    ({"max_pixels": 0}, "max_pixels must be a positive int or None"),
])
def test_invalid_arguments_raise_value_error_even_in_try(smooth_png, options, message):
    with pytest.raises(ValueError, match=message):
        load_image(smooth_png, **options)
    with pytest.raises(ValueError, match=message):
        try_load_image(smooth_png, **options)


def test_try_load_image_success(smooth_png):
    image, reason = try_load_image(smooth_png, size=(20, 30))
    assert reason is None
    assert np.array_equal(image, load_image(smooth_png, size=(20, 30)))


def test_file_sha1_matches_hashlib(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 3 * (1 << 20) + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha1(data).hexdigest()
    assert file_sha1(path) == expected
    assert file_sha1(str(path), block_size=1000) == expected
    with pytest.raises(ImageError, match="file not found"):
        file_sha1(tmp_path / "missing.bin")


def test_image_error_survives_pickling():
    error = pickle.loads(pickle.dumps(ImageError("a/b.jpg", "truncated JPEG")))
    assert isinstance(error, ImageError)
    assert (error.path, error.reason, str(error)) == ("a/b.jpg", "truncated JPEG", "a/b.jpg: truncated JPEG")


def test_threads_give_the_same_pixels_as_one_thread(tmp_path):
    paths = []
    for index in range(8):
        pixels = np.roll(smooth_rgb(200, 260), index * 17, axis=1)
        paths.append(save(Image.fromarray(pixels), tmp_path / f"{index}.jpg", quality=90))
    paths.append(make_text_as_jpeg(tmp_path))
    sequential = [try_load_image(path, size=64, equalize=True) for path in paths]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda path: try_load_image(path, size=64, equalize=True), paths * 3))
    for index, (image, reason) in enumerate(threaded):
        expected_image, expected_reason = sequential[index % len(paths)]
        assert reason == expected_reason
        assert (image is None and expected_image is None) or np.array_equal(image, expected_image)

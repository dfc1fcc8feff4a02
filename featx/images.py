"""Safe image decoding and preprocessing: the one place in featx that opens image files.

:func:`load_image` turns any JPEG, PNG, BMP, WebP, GIF (first frame) or TIFF into a C-contiguous
``uint8`` RGB array, EXIF orientation applied, optionally resized, centre-cropped and
histogram-equalized. Every file that cannot be read raises :class:`ImageError` with a short reason;
:func:`try_load_image` returns that reason instead. How colour modes become RGB, how large JPEGs
are decoded at reduced scale, and the safety rules: docs/stages.md, "Images".

Importing this module sets ``cv2.setNumThreads(1)`` (featx parallelises across images, not inside
one resize) and silences Pillow's ``DecompressionBombWarning`` (featx's own limit is an error).
Everything here is a plain function with no shared state, safe in threads and worker processes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import struct
import warnings
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from featx.errors import UserError

# Importing a plugin registers its format; doing it here (instead of letting Pillow's lazy ``init()``
# import all of them on first use) keeps start-up short and the set of decoders explicit.
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin  # noqa: F401  isort: skip
from PIL import PngImagePlugin, TiffImagePlugin, WebPImagePlugin  # noqa: F401  isort: skip

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "INTERPOLATIONS", "ImageError", "is_image_name", "load_image",
           "try_load_image", "file_sha1"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

# Pillow's own default (about a 9459 x 9459 image, ~268 MB as RGB).
DEFAULT_MAX_PIXELS: int = 89_478_485

INTERPOLATIONS: dict[str, int] = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
                                   "nearest": cv2.INTER_NEAREST, "lanczos": cv2.INTER_LANCZOS4}

# Pillow format names tried when opening; anything else is "not an image" (camera MPO files open
# through the JPEG factory and report format "MPO").
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

# Leading bytes of each format, to tell "not an image" from a damaged header when Pillow cannot identify a file.
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WEBP"))

_ERRNO_REASONS = {errno.ENOENT: "file not found", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                  errno.EISDIR: "is a directory, not a file"}

_ORIENTATION_TAG = ExifTags.Base.Orientation
_SWAPS_AXES = frozenset({5, 6, 7, 8})
# EXIF orientation -> (flip rows, flip columns, then transpose): PIL.ImageOps.exif_transpose's convention.
_ORIENTATIONS = {2: (False, True, False), 3: (True, True, False), 4: (True, False, False), 5: (False, False, True),
                 6: (True, False, True), 7: (True, True, True), 8: (False, True, True)}


def _silence_pillow_bomb_warnings() -> None:
    """Drop Pillow's DecompressionBombWarning (featx's own limit is an error); its message carries the
    pixel count, so Python's once-per-message rule would print one per large photo."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


cv2.setNumThreads(1)
_silence_pillow_bomb_warnings()


class ImageError(UserError):
    """An image file could not be read (the user's data: one line at the command line).

    ``reason`` is a short cause: ``"zero-byte file"``, ``"truncated JPEG"``, ``"not an image ..."``,
    ``"permission denied"``, ``"file not found"``, ``"decompression bomb: 200000000 pixels > limit
    89478485"``... ``str(ImageError("cat.1.jpg", "truncated JPEG"))`` is ``'cat.1.jpg: truncated JPEG'``.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        # Both go to Exception.__init__ so the error pickles across processes.
        super().__init__(os.fspath(path), reason)
        self.path = os.fspath(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` has an image file extension (case-insensitive).

    Examples
    --------
    >>> is_image_name("train/Cat.1.JPG"), is_image_name("notes.txt")
    (True, False)
    """
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def load_image(path: str | os.PathLike, size: int | Sequence[int] | None = None, interpolation: str = "area",
               equalize: bool = False, keep_aspect: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               draft: bool = True) -> np.ndarray:
    """Decode an image file (format read from the content) to C-contiguous ``uint8`` RGB, EXIF orientation applied.

    Parameters
    ----------
    size : int, (height, width) or None, default=None
        Output size. None keeps the original size; an int gives a square.
    interpolation : {"area", "linear", "cubic", "nearest", "lanczos"}, default="area"
        OpenCV interpolation used by the resize.
    equalize : bool, default=False
        Histogram-equalize each channel (``cv2.equalizeHist``) as the Caffe cats-vs-dogs recipe
        does, but after resizing: cheaper, and independent of a reduced-scale JPEG decode.
    keep_aspect : bool, default=False
        Scale the shorter side to fit and centre-crop the rest, instead of squashing to ``size``.
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS
        Refuse images with more pixels, judged from the header before decoding. None disables
        featx's limit (Pillow still refuses more than ``2 * PIL.Image.MAX_IMAGE_PIXELS``).
    draft : bool, default=True
        Decode JPEGs at reduced DCT scale when ``size`` is at least twice smaller.

    Raises ``ImageError`` (cause in ``.reason``) for every file that cannot be read, ``ValueError``
    for invalid arguments (before the file is touched).

    Examples
    --------
    >>> import tempfile, os
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "red.png")
    >>> Image.new("RGB", (64, 48), (255, 0, 0)).save(path)
    >>> image = load_image(path, size=(32, 40))
    >>> image.shape, image.dtype, image[0, 0].tolist()
    ((32, 40, 3), dtype('uint8'), [255, 0, 0])
    """
    target = _check_size(size)
    flag = _check_interpolation(interpolation)
    if max_pixels is not None and (isinstance(max_pixels, bool) or int(max_pixels) < 1):
        raise ValueError(f"max_pixels must be a positive int or None; got {max_pixels!r}")
    path = os.fspath(path)

    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise ImageError(path, _os_reason(exc)) from None
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ImageError(path, "zero-byte file")
        image, orientation = _decode(handle, path, target, max_pixels, draft)
        try:
            pixels = _convert_mode(image)
        except Exception as exc:  # noqa: BLE001 - e.g. a broken palette, or LAB in an odd build
            raise ImageError(path, f"unsupported colour mode {image.mode}: {_short(exc)}") from None
    if target is not None:
        # Work at the stored orientation; the small result is rotated last.
        stored_target = target[::-1] if orientation in _SWAPS_AXES else target
        if keep_aspect:
            pixels = _centre_crop_to_aspect(pixels, stored_target)
        if pixels.shape[:2] != stored_target:
            pixels = cv2.resize(pixels, stored_target[::-1], interpolation=flag)
    if equalize:
        pixels = _equalize(pixels)
    pixels = _apply_orientation(pixels, orientation)
    if pixels.ndim == 2:
        pixels = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(pixels)


def try_load_image(path: str | os.PathLike, **kwargs: Any) -> tuple[np.ndarray | None, str | None]:
    """:func:`load_image` that returns ``(image, None)``, or ``(None, reason)`` for a bad file.

    Invalid arguments still raise ``ValueError``: those are the caller's mistake, not the file's.

    >>> try_load_image("no/such/file.jpg")
    (None, 'file not found')
    """
    try:
        return load_image(path, **kwargs), None
    except ImageError as exc:
        return None, exc.reason


def file_sha1(path: str | os.PathLike, block_size: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes, read in blocks (the manifest's content id); :class:`ImageError` (same
    reasons as :func:`load_image`) when the file cannot be read."""
    digest = hashlib.sha1(usedforsecurity=False)
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(block_size), b""):
                digest.update(block)
    except OSError as exc:
        raise ImageError(path, _os_reason(exc)) from None
    return digest.hexdigest()


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        values = [int(size), int(size)]
    elif isinstance(size, (tuple, list, np.ndarray)) and len(size) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size
    ):
        values = [int(v) for v in size]
    else:
        raise ValueError(f"size must be None, an int or (height, width) ints; got {size!r}")
    if min(values) < 1:
        raise ValueError(f"size must be positive; got {size!r}")
    return values[0], values[1]


def _check_interpolation(interpolation: str) -> int:
    try:
        return INTERPOLATIONS[interpolation]
    except (KeyError, TypeError):
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}") from None


def _decode(handle, path, target, max_pixels, draft):
    """Open, check the header, decode; return (PIL image fully loaded, orientation)."""
    try:
        image = Image.open(handle, formats=_PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(path, _pillow_bomb_reason(exc, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageError(path, _header_reason(handle)) from None
    except Exception as exc:  # noqa: BLE001 - any plugin failure is a bad file
        raise ImageError(path, _header_reason(handle, exc)) from None

    kind = image.format or "image"
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(path, f"decompression bomb: {width * height} pixels > limit {max_pixels}")
    try:
        orientation = _exif_orientation(image) if kind in _DRAFT_FORMATS else 1
        if target is not None and draft and kind in _DRAFT_FORMATS:
            # (width, height) at stored orientation that the reduced decode must cover: Pillow picks the
            # largest DCT scale (1/8, 1/4, 1/2) that keeps both sides at least this large. It serves
            # ``keep_aspect`` too: a centred crop of the target's aspect is at least ``target`` when the image is.
            image.draft("RGB", target if orientation in _SWAPS_AXES else target[::-1])
        image.load()
        if kind not in _DRAFT_FORMATS:
            orientation = _exif_orientation(image)
        return image, orientation
    except Image.DecompressionBombError as exc:  # a later GIF frame, say
        raise ImageError(path, _pillow_bomb_reason(exc, max_pixels)) from None
    except EOFError:
        raise ImageError(path, f"truncated {kind}") from None
    except MemoryError:
        raise ImageError(path, f"out of memory decoding {width}x{height} {kind}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        if "truncated" in str(exc).lower():
            raise ImageError(path, f"truncated {kind}") from None
        raise ImageError(path, f"corrupt {kind}: {_short(exc)}") from None


def _exif_orientation(image: Image.Image) -> int:
    try:
        orientation = int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - damaged EXIF is common; the pixels are fine
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip like PIL.ImageOps.exif_transpose (views; made contiguous later)."""
    flip_rows, flip_columns, transpose = _ORIENTATIONS.get(orientation, (False, False, False))
    pixels = pixels[::-1 if flip_rows else 1, ::-1 if flip_columns else 1]
    return pixels.swapaxes(0, 1) if transpose else pixels


def _convert_mode(image: Image.Image) -> np.ndarray:
    """Loaded PIL image -> uint8 array, (H, W) for grayscale or (H, W, 3) RGB."""
    mode = image.mode
    if mode in ("P", "L", "RGB", "1") and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("L", "RGB"):
        return np.asarray(image)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _rescale_gray(np.asarray(image))
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):  # composited on white
        rgba = np.asarray(image.convert("RGBA")).astype(np.uint32)
        alpha = rgba[..., 3:4]
        return ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, RGBX


def _rescale_gray(values: np.ndarray) -> np.ndarray:
    """High bit-depth grayscale -> uint8 (rules in the module docstring)."""
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    is_float = values.dtype.kind == "f"
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if is_float and low >= 0 and high <= 1:
        scaled = values * 255
    elif low >= 0 and high <= 255:
        scaled = values
    elif not is_float and low >= 0 and high <= 65535:
        scaled = values / 257
    else:
        scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _centre_crop_to_aspect(pixels: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Largest centred box with the aspect ratio of ``target`` (height, width)."""
    height, width = pixels.shape[:2]
    crop_height = min(height, max(1, round(width * target[0] / target[1])))
    crop_width = min(width, max(1, round(height * target[1] / target[0])))
    top = (height - crop_height) // 2
    left = (width - crop_width) // 2
    return pixels[top : top + crop_height, left : left + crop_width]


def _equalize(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return cv2.equalizeHist(np.ascontiguousarray(pixels))
    channels = [cv2.equalizeHist(np.ascontiguousarray(pixels[..., c])) for c in range(3)]
    return np.stack(channels, axis=-1)


def _os_reason(exc: OSError) -> str:
    return _ERRNO_REASONS.get(exc.errno) or f"cannot open: {exc.strerror or exc}"


def _header_reason(handle, exc: Exception | None = None) -> str:
    """Why Pillow could not open a file: judged from its first bytes."""
    handle.seek(0)
    head = handle.read(16)
    kind = next((name for signature, name in _SIGNATURES if head.startswith(signature)), None)
    if kind == "WEBP" and head[8:12] != b"WEBP":
        kind = None
    if kind is None:
        return "not an image (expected JPEG, PNG, BMP, WebP, GIF or TIFF content)"
    if kind == "WEBP" and len(head) >= 8:
        # RIFF states its own length: fewer bytes on disk means a cut file.
        declared = struct.unpack("<I", head[4:8])[0] + 8
        if os.fstat(handle.fileno()).st_size < declared:
            return "truncated WEBP"
    if exc is not None and "truncated" in str(exc).lower():
        return f"truncated {kind}"
    return f"corrupt {kind} header" + (f": {_short(exc)}" if exc is not None else "")


def _pillow_bomb_reason(exc: Exception, max_pixels: int | None) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = int(found.group(1)) if found else None
    pillow_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    if max_pixels is not None and pixels is not None and pixels > max_pixels:
        return f"decompression bomb: {pixels} pixels > limit {max_pixels}"
    return (f"decompression bomb: {pixels} pixels > Pillow's limit {pillow_limit} "
            "(raise PIL.Image.MAX_IMAGE_PIXELS as well as max_pixels to read it)")


def _short(exc: Exception, limit: int = 120) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

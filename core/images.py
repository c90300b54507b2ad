"""Uploaded images: what is accepted, checked in the order that keeps hostile files cheap to refuse.

``validate_image`` runs in the API before anything is stored:

1. byte size against ``max_file_bytes``;
2. the format, sniffed from the bytes by Pillow (PNG, JPEG, WebP only; the client's content type is
   ignored);
3. width and height from the *header* against ``max_image_side`` and ``max_image_pixels``, before a
   single pixel is decoded, so a few-kilobyte decompression bomb costs nothing;
4. animated images (WebP, APNG) are refused; ``verify()`` (PNG chunk CRCs) and then a full decode with
   ``load()`` on a fresh object, so truncated or corrupt files are refused now rather than in the middle of a
   GPU job;
5. EXIF orientation: an image that orientation turns or mirrors is re-encoded as PNG with the pixels
   upright and without metadata; others are stored byte for byte.

``load_image`` is the worker's side: stored bytes to an RGB ``PIL.Image.Image``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from core.config import LimitSettings
from core.errors import (
    FileTooLargeError,
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedMediaError,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

__all__ = ["ACCEPTED_CONTENT_TYPES", "ValidatedImage", "load_image", "validate_image"]

# Pillow format name -> the content type we store and report.
ACCEPTED_CONTENT_TYPES: dict[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_PILLOW_FORMATS = tuple(ACCEPTED_CONTENT_TYPES)
# Pillow's JPEG opener hands back "MPO" for multi-picture JPEGs (many phone cameras); it is still a JPEG file.
_FORMAT_CONTENT_TYPES = {**ACCEPTED_CONTENT_TYPES, "MPO": "image/jpeg"}
_FIELD = "file"

# What Pillow raises for bad data besides OSError (which includes UnidentifiedImageError and decoder errors).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)

# Orientation values 2..8 move or mirror pixels; 1 (or no tag) means the pixels are already upright.
_UPRIGHT = 1
# Modes PNG stores without loss of meaning once ``info`` (palette transparency, ICC profile) is dropped.
_PNG_SAFE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "RGB", "RGBA"})


@dataclass(frozen=True)
class ValidatedImage:
    """An upload that passed every check, ready to store.

    Args:
        content_type: ``image/png``, ``image/jpeg`` or ``image/webp``: the type of ``data``.
        width: width in pixels, after EXIF orientation.
        height: height in pixels, after EXIF orientation.
        sha256: hex SHA-256 of ``data``.
        data: the bytes to store: the upload itself, or its upright PNG re-encoding.
    """

    content_type: str
    width: int
    height: int
    sha256: str
    data: bytes = field(repr=False)


def validate_image(data: bytes, limits: LimitSettings) -> ValidatedImage:
    """Check an uploaded file and return the bytes to store with their facts.

    Args:
        data: the uploaded file, as received.
        limits: ``max_file_bytes``, ``max_image_side`` and ``max_image_pixels`` apply.

    Returns:
        A ``ValidatedImage``; its ``data`` is a new upright PNG when EXIF orientation changed the image.

    Raises:
        FileTooLargeError: more than ``max_file_bytes`` bytes.
        UnsupportedMediaError: not PNG, JPEG or WebP.
        ImageTooLargeError: a side above ``max_image_side`` or an area above ``max_image_pixels``,
            found from the header alone.
        InvalidImageError: empty, truncated, corrupt or animated.

    Every error carries ``field="file"`` and names the limit or rule and the value received.
    """
    if len(data) > limits.max_file_bytes:
        raise FileTooLargeError(
            f"file is {len(data)} bytes; the limit is {limits.max_file_bytes} bytes (max_file_bytes)", field=_FIELD
        )
    if not data:
        raise InvalidImageError("file is empty (0 bytes); expected a PNG, JPEG or WebP image", field=_FIELD)

    # Our own header parse runs before Pillow's: libwebp allocates the whole canvas when Pillow merely
    # opens a WebP, and Pillow's bomb check would otherwise answer first with its own (higher) limit.
    header_size = _header_size(data)
    if header_size is not None:
        _check_dimensions(*header_size, limits)

    with _open(data) as header:
        image_format = str(header.format)
        if image_format not in _FORMAT_CONTENT_TYPES:
            raise UnsupportedMediaError(f"file is a {image_format} image; accepted: PNG, JPEG, WebP", field=_FIELD)
        _check_dimensions(header.width, header.height, limits)
        # Which frame of an animation a client meant is anyone's guess, and each frame would be decoded again in
        # the worker. Multi-picture JPEGs (MPO, phone cameras) stay accepted: their first picture is the photo.
        frames = int(getattr(header, "n_frames", 1))
        if image_format != "MPO" and frames > 1:
            raise InvalidImageError(
                f"file is an animated {image_format} ({frames} frames); upload a single still image",
                field=_FIELD,
            )
        # verify() checks structure (PNG chunk CRCs) without decoding; Pillow allows nothing else on a
        # verified object, so the full decode below needs a fresh one.
        _decode(header.verify)
    with _open(data) as image:
        _decode(image.load)
        orientation = _orientation(image)
        if orientation == _UPRIGHT:
            stored, content_type, (width, height) = data, _FORMAT_CONTENT_TYPES[image_format], image.size
        else:
            upright = _decode(lambda: ImageOps.exif_transpose(image))
            stored, content_type, (width, height) = _encode_png(upright), "image/png", upright.size
            logger.debug(
                "re-encoded %s with EXIF orientation %d as %dx%d PNG", image_format, orientation, width, height
            )
    return ValidatedImage(
        content_type=content_type,
        width=width,
        height=height,
        sha256=hashlib.sha256(stored).hexdigest(),
        data=stored,
    )


def load_image(data: bytes, *, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Decode stored image bytes into an upright RGB image (for the worker).

    EXIF orientation is applied (a no-op for files that went through ``validate_image``) and
    transparent pixels are composited onto ``background``, so a cut-out subject does not sit on
    whatever colour its invisible pixels happen to hold.

    Args:
        data: PNG, JPEG or WebP bytes, normally ones ``validate_image`` accepted.
        background: the colour under transparent pixels. White suits photos; pass ``(0, 0, 0)`` for
            masks, where white means "the concept" and a transparent area should not.

    Returns:
        A fully loaded ``PIL.Image.Image`` in mode ``RGB``.

    Raises:
        UnsupportedMediaError: not PNG, JPEG or WebP.
        ImageTooLargeError: larger than Pillow's own decompression-bomb limit.
        InvalidImageError: truncated or corrupt.
    """
    with _open(data) as image:
        upright = _decode(lambda: ImageOps.exif_transpose(image))
    if upright.mode == "P" and "transparency" in upright.info:
        upright = upright.convert("RGBA")
    if upright.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = upright.convert("RGBA")
        under = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(under, rgba).convert("RGB")
    return upright.convert("RGB")


def _open(data: bytes) -> Image.Image:
    """Open lazily (header only), restricted to the accepted formats."""
    try:
        return Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses by itself before our limits could be checked (its limit is above ours by default).
        raise ImageTooLargeError(f"image is too large to decode safely: {exc}", field=_FIELD) from exc
    except UnidentifiedImageError as exc:
        kind = _signature_format(data)
        if kind is not None:
            raise InvalidImageError(
                f"file starts like a {kind} image but its header cannot be read (corrupt or truncated)", field=_FIELD
            ) from exc
        raise UnsupportedMediaError(
            f"file is not a PNG, JPEG or WebP image (first bytes: {data[:8].hex()})", field=_FIELD
        ) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"image header is corrupt: {exc}", field=_FIELD) from exc


def _check_dimensions(width: int, height: int, limits: LimitSettings) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image is {width}x{height} pixels; both sides must be positive", field=_FIELD)
    if max(width, height) > limits.max_image_side:
        raise ImageTooLargeError(
            f"image is {width}x{height} pixels; the limit is {limits.max_image_side} pixels per side (max_image_side)",
            field=_FIELD,
        )
    if width * height > limits.max_image_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_image_pixels} pixels "
            f"(max_image_pixels)",
            field=_FIELD,
        )


def _decode(step: Callable[[], _T]) -> _T:
    """Run one decoding step, turning Pillow's errors into the upload errors."""
    try:
        return step()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image is too large to decode safely: {exc}", field=_FIELD) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"image data is truncated or corrupt: {exc}", field=_FIELD) from exc


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, _UPRIGHT)
    except _DECODE_ERRORS as exc:
        # A broken EXIF block is metadata we do not trust anyway; the pixels decoded fine.
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return _UPRIGHT
    return value if isinstance(value, int) and 2 <= value <= 8 else _UPRIGHT


def _encode_png(image: Image.Image) -> bytes:
    if image.mode not in _PNG_SAFE_MODES:
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    # PNG's encoder copies ICC profile and transparency from ``info``; start clean so no metadata survives.
    image.info = {}
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _signature_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file's header without Pillow, or ``None`` when it cannot be read this way."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        # IHDR is always the first chunk: length, "IHDR", then 32-bit big-endian width and height.
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_header_size(data)
    return _webp_header_size(data)


# Start-of-frame markers carry the size: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_header_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG marker segments up to the first start-of-frame and read its size."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in {0x01, 0xD8} or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return width, height
        if length < 2:
            return None
        i += 2 + length
    return None


def _webp_header_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP's first chunk (VP8X, VP8L or VP8), or ``None`` when it is not a WebP we can read."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended format: 24-bit canvas width-1 and height-1
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit width-1 and height-1 after the signature
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit width and height after start code
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None

"""Upload validation: accepted formats, limits read from the header, corrupt files, EXIF orientation."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import pytest
from PIL import Image, ImageFile

from core.config import LimitSettings
from core.errors import (
    FileTooLargeError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidRequestError,
    UnsupportedMediaError,
)
from core.images import load_image, validate_image

LIMITS = LimitSettings()
ORIENTATION = 0x0112


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Random pixels: they do not compress, so a truncated file really lacks image data."""
    return Image.frombytes(mode, (width, height), bytes(range(256)) * (width * height * len(mode) // 256 + 1))


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` RGB, followed by a few KB of zlib-compressed zero rows.

    A real bomb carries all its rows (zeros compress ~1000:1); a few rows are enough to show that the
    validator refuses from the header without inflating anything.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(bytes((1 + 3 * width) * 4), 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def webp_vp8x_header(width: int, height: int) -> bytes:
    """The first 30 bytes of an extended WebP: RIFF header and a VP8X chunk with the canvas size."""
    vp8x = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything decodes pixels."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# -- accepted -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "content_type", "mode"),
    [("PNG", "image/png", "RGB"), ("PNG", "image/png", "RGBA"), ("JPEG", "image/jpeg", "RGB"),
     ("WEBP", "image/webp", "RGB"), ("WEBP", "image/webp", "RGBA"), ("JPEG", "image/jpeg", "L")],
)  # fmt: skip
def test_accepted_formats_are_stored_as_sent(image_format: str, content_type: str, mode: str) -> None:
    data = encode(noise(48, 32, mode), image_format)
    result = validate_image(data, LIMITS)
    assert result.content_type == content_type
    assert (result.width, result.height) == (48, 32)
    assert result.data == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_multi_picture_jpeg_from_a_phone_is_a_jpeg() -> None:
    data = encode(noise(32, 16), "MPO", save_all=True, append_images=[noise(32, 16)])
    result = validate_image(data, LIMITS)
    assert (result.content_type, result.width, result.height) == ("image/jpeg", 32, 16)
    assert load_image(result.data).size == (32, 16)


def test_format_is_sniffed_not_taken_from_a_name() -> None:
    # Same bytes whatever the client claimed; the validator never sees a filename or content type.
    data = encode(noise(16, 16), "WEBP", lossless=True)
    assert validate_image(data, LIMITS).content_type == "image/webp"


def test_repr_leaves_the_bytes_out() -> None:
    result = validate_image(encode(noise(16, 16), "PNG"), LIMITS)
    assert "data" not in repr(result)


# -- refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"hello, this is plain text\n" * 10, b"%PDF-1.7\n", b"GIF89a" + bytes(64)],
    ids=["text", "pdf", "gif-header"],
)
def test_other_files_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaError) as info:
        validate_image(data, LIMITS)
    assert info.value.field == "file"
    assert info.value.code == "unsupported_media_type"


@pytest.mark.parametrize("image_format", ["GIF", "BMP", "TIFF"])
def test_real_images_of_other_formats_are_unsupported(image_format: str) -> None:
    with pytest.raises(UnsupportedMediaError, match="PNG, JPEG or WebP"):
        validate_image(encode(noise(16, 16), image_format), LIMITS)


def test_empty_file_is_invalid() -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        validate_image(b"", LIMITS)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP"])
def test_truncated_image_is_invalid(image_format: str) -> None:
    data = encode(noise(64, 64), image_format)
    with pytest.raises(InvalidImageError) as info:
        validate_image(data[: len(data) // 2], LIMITS)
    assert info.value.field == "file"
    assert info.value.code == "invalid_image"


def test_png_with_a_bad_checksum_is_invalid() -> None:
    data = bytearray(encode(noise(32, 32), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    with pytest.raises(InvalidImageError):
        validate_image(bytes(data), LIMITS)


def test_header_only_png_is_invalid() -> None:
    with pytest.raises(InvalidImageError, match="PNG"):
        validate_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 4, LIMITS)


@pytest.mark.usefixtures("no_pixel_decoding")
def test_too_many_bytes_refused_before_anything_else() -> None:
    limits = LimitSettings(max_file_bytes=1000)
    with pytest.raises(FileTooLargeError, match=r"1001 bytes.*1000 bytes \(max_file_bytes\)") as info:
        validate_image(b"x" * 1001, limits)
    assert info.value.field == "file"


@pytest.mark.usefixtures("no_pixel_decoding")
def test_decompression_bomb_refused_from_the_header() -> None:
    bomb = png_bomb(100_000, 100_000)
    assert len(bomb) < 10_000
    with pytest.raises(ImageTooLargeError, match=r"100000x100000.*4096 pixels per side \(max_image_side\)") as info:
        validate_image(bomb, LIMITS)
    assert info.value.field == "file"


@pytest.mark.usefixtures("no_pixel_decoding")
def test_area_limit_checked_from_the_header() -> None:
    with pytest.raises(ImageTooLargeError, match=r"4000x4001 = 16004000 pixels.*16000000 pixels \(max_image_pixels\)"):
        validate_image(png_bomb(4000, 4001), LIMITS)


@pytest.mark.usefixtures("no_pixel_decoding")
def test_webp_canvas_size_checked_before_libwebp_sees_it() -> None:
    with pytest.raises(ImageTooLargeError, match="16000x16000"):
        validate_image(webp_vp8x_header(16_000, 16_000), LIMITS)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP"])
def test_side_limit_applies_to_every_format(image_format: str) -> None:
    data = encode(Image.new("RGB", (300, 20)), image_format)
    with pytest.raises(ImageTooLargeError, match=r"300x20.*256 pixels per side"):
        validate_image(data, LimitSettings(max_image_side=256))
    assert validate_image(data, LimitSettings(max_image_side=300)).width == 300


def test_all_refusals_are_invalid_request_errors_on_the_file_field() -> None:
    for data in (b"", b"text", png_bomb(5000, 10)):
        with pytest.raises(InvalidRequestError) as info:
            validate_image(data, LIMITS)
        assert info.value.field == "file"


# -- EXIF orientation ---------------------------------------------------------------------------


def two_tone(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    return image


def test_exif_rotation_is_applied_and_reencoded_as_png() -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored pixels must be turned 90° clockwise to display
    exif[0x010F] = "CameraMaker"  # other metadata, which must not survive
    data = encode(two_tone(40, 20), "JPEG", exif=exif, quality=95)

    result = validate_image(data, LIMITS)

    assert (result.width, result.height) == (20, 40)
    assert result.content_type == "image/png"
    assert result.sha256 == hashlib.sha256(result.data).hexdigest()
    with Image.open(io.BytesIO(result.data)) as stored:
        assert stored.format == "PNG"
        assert stored.size == (20, 40)
        assert not stored.getexif()
        assert "exif" not in stored.info
        # Turned clockwise, the left (red) half is now on top.
        red, _, blue = stored.convert("RGB").getpixel((10, 5))  # type: ignore[misc]
        assert red > 200 and blue < 60
        red, _, blue = stored.convert("RGB").getpixel((10, 35))  # type: ignore[misc]
        assert blue > 200 and red < 60


def test_upright_exif_keeps_the_original_bytes() -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 1
    data = encode(two_tone(40, 20), "JPEG", exif=exif)
    result = validate_image(data, LIMITS)
    assert result.data == data
    assert (result.width, result.height) == (40, 20)


def test_mirrored_png_with_exif_chunk_is_reencoded() -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 2  # mirrored horizontally
    result = validate_image(encode(two_tone(40, 20), "PNG", exif=exif), LIMITS)
    assert (result.width, result.height) == (40, 20)
    with Image.open(io.BytesIO(result.data)) as stored:
        assert stored.convert("RGB").getpixel((2, 10)) == (0, 0, 255)


def test_side_limit_uses_the_header_before_orientation() -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    data = encode(Image.new("RGB", (300, 20)), "JPEG", exif=exif)
    with pytest.raises(ImageTooLargeError):
        validate_image(data, LimitSettings(max_image_side=256))


# -- load_image ---------------------------------------------------------------------------------


def test_load_image_returns_rgb_and_composites_alpha_on_white() -> None:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 4, 8))
    loaded = load_image(encode(image, "PNG"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((7, 0)) == (255, 0, 0)
    # Masks ask for black, so a transparent area is not mistaken for the concept.
    assert load_image(encode(image, "PNG"), background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)


def test_load_image_applies_orientation_and_converts_grayscale() -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    loaded = load_image(encode(Image.new("L", (30, 10), 128), "JPEG", exif=exif))
    assert loaded.mode == "RGB"
    assert loaded.size == (10, 30)


def test_load_image_refuses_garbage() -> None:
    with pytest.raises(UnsupportedMediaError):
        load_image(b"not an image")
    data = encode(noise(64, 64), "PNG")
    with pytest.raises(InvalidImageError):
        load_image(data[: len(data) // 2])

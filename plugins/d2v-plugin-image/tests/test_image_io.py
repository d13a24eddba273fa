"""Decoding image bytes of every common format and mode to RGB; unusable bytes are skipped."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from d2v_core.interfaces import SkipRecord

from d2v_plugin_image.image_io import decode_image


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_rgb_png_is_lossless():
    arr = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(arr, "RGB"), "PNG"))
    assert out.mode == "RGB" and out.size == (7, 9)
    assert np.array_equal(np.asarray(out), arr)


def test_grey_png_repeats_the_level():
    out = np.asarray(decode_image(encode(Image.new("L", (5, 4), 100), "PNG")))
    assert out.shape == (4, 5, 3) and (out == 100).all()


def test_palette_png_with_transparency_gives_palette_colours():
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 200, 30, 60] + [0] * 762)
    img.info["transparency"] = 0
    out = np.asarray(decode_image(encode(img, "PNG", transparency=0)))
    assert (out == np.array([200, 30, 60])).all()


def test_cmyk_jpeg_becomes_rgb():
    # Pure cyan in CMYK is (0, 255, 255) in RGB; JPEG is lossy, so allow a small error.
    out = np.asarray(decode_image(encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)))
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - np.array([0, 255, 255])).max() <= 6


def test_rgba_webp_drops_alpha():
    arr = np.zeros((6, 6, 4), dtype=np.uint8)
    arr[..., :3] = (10, 120, 230)
    arr[..., 3] = 128
    out = np.asarray(decode_image(encode(Image.fromarray(arr, "RGBA"), "WEBP", lossless=True)))
    assert (out == np.array([10, 120, 230])).all()


def test_grey_alpha_png():
    out = np.asarray(decode_image(encode(Image.new("LA", (3, 3), (77, 10)), "PNG")))
    assert (out == 77).all()


def test_16_bit_grey_png_is_rescaled_not_clipped():
    arr = np.full((4, 4), 40000, dtype=np.uint16)
    out = np.asarray(decode_image(encode(Image.fromarray(arr), "PNG")))
    assert (out == round(40000 / 257)).all()  # 156, where a plain convert("RGB") gives 255


def test_jpeg_rgb_roundtrip_close():
    arr = np.full((16, 16, 3), (50, 100, 150), dtype=np.uint8)
    out = np.asarray(decode_image(encode(Image.fromarray(arr), "JPEG", quality=95)))
    assert np.abs(out.astype(int) - arr).max() <= 3


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"\xff\xd8\xff" + b"\x13" * 100],
    ids=["empty", "text", "png-magic-garbage", "jpeg-magic-garbage"],
)
def test_garbage_is_skipped_as_unreadable(data):
    with pytest.raises(SkipRecord) as err:
        decode_image(data)
    assert err.value.reason == "unreadable"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_files_are_skipped(fmt):
    arr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(arr), fmt)
    with pytest.raises(SkipRecord) as err:
        decode_image(data[: len(data) // 2])
    assert err.value.reason == "unreadable"


def test_non_bytes_payload_is_skipped():
    with pytest.raises(SkipRecord, match="expected bytes"):
        decode_image("a string")  # type: ignore[arg-type]

"""Image bytes (JPEG, PNG, WebP) to an RGB Pillow image; unusable bytes become SkipRecord."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from d2v_core.interfaces import SkipRecord

#: Record extensions holding an image, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB.

    Grey, palette, CMYK and others go through ``Image.convert("RGB")``, which drops alpha as
    torchvision's and timm's loaders do. Integer modes (16-bit PNG) are rescaled to 8 bits first,
    because ``convert`` would clip them to white.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        arr = np.asarray(img).astype(np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0  # 16-bit range onto 0..255
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow asks for this step for palettes with transparency
    return img.convert("RGB")


def decode_image(data: bytes, what: str = "image", max_pixels: int | None = None) -> Image.Image:
    """Decode ``data`` fully into an RGB image, or raise ``SkipRecord("unreadable", ...)``; an
    image of more than ``max_pixels`` (from its header, before any pixel is decoded) raises
    ``SkipRecord("too_large", ...)``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SkipRecord("unreadable", f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise SkipRecord("unreadable", f"{what}: empty file")
    try:
        # No context manager: closing would free the decoded pixels of an RGB image we return.
        img = Image.open(io.BytesIO(data))  # reads the header only
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise SkipRecord("too_large", f"{what}: {img.width}x{img.height} pixels, more than max_pixels={max_pixels}")
        img.load()  # decode now, so truncated files fail here rather than in the transforms
        if img.width == 0 or img.height == 0:
            raise SkipRecord("unreadable", f"{what}: image has zero size")
        return _to_rgb(img)
    except SkipRecord:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for corrupt data; skip them all
        raise SkipRecord("unreadable", f"{what}: {type(exc).__name__}: {exc}") from None

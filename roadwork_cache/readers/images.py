"""Safe decoding of untrusted image bytes into 8-bit RGB.

Every failure is returned as one sentence (`ImageError`) so that stage one can record the
row with status `error` and go on. The pixel bound is checked from the header, before any
pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 100 megapixels: the largest real NATIX frames are 4032x3024 (12 MP).
MAX_PIXELS = 100_000_000
# Smaller than one 16 px DINOv3 patch is not a photograph: refused with a documented error.
MIN_SIDE = 16


class ImageError(ValueError):
    """An image that cannot become a sample; the message is the one-line reason."""


def to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}:
        # 16-bit / 32-bit greyscale: PIL's convert("L") clips instead of scaling, so scale
        # the real range down to 8 bits by hand.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if mode == "I" and arr.max() <= 255:
            top = 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"} or (mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, as a browser shows them, instead of their
        # undefined stored colour.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK, YCbCr, LAB, HSV, L, 1, P: PIL knows the conversion.
    return img.convert("RGB")


def decode_image(
    data: bytes | None, max_pixels: int = MAX_PIXELS, draft_side: int | None = None
) -> Image.Image:
    """Decode image bytes to an upright 8-bit RGB image, or raise ImageError.

    `draft_side`: a JPEG may be decoded at a reduced DCT scale (1/2, 1/4, 1/8) as long as both
    sides stay at least this long: a 12 MP frame cut into 512 px views needs no more than
    half its resolution, and the reduced decode skips most of the inverse-DCT work.
    """
    if data is None or len(data) == 0:
        raise ImageError("empty image: the file has no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image: no known image format recognised") from None
    except Image.DecompressionBombWarning as exc:
        raise ImageError(f"image refused: {exc}") from None
    except Exception as exc:  # PIL raises many types on hostile headers
        raise ImageError(f"unreadable image header: {exc}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(f"image refused: {width}x{height} is over the {max_pixels:,} pixel bound")
    if draft_side and img.format == "JPEG":
        img.draft("RGB", (draft_side, draft_side))
    try:
        img.load()
    except Exception as exc:
        raise ImageError(f"corrupt or truncated image ({img.format}): {exc}") from None
    scale = width / img.size[0]  # > 1 when decoded from a reduced-scale draft
    # A broken EXIF block is not worth losing the image over.
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    width, height = round(img.size[0] * scale), round(img.size[1] * scale)
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image too small: {width}x{height}, the minimum side is {MIN_SIDE} px")
    try:
        rgb = to_rgb(img)
    except Exception as exc:
        raise ImageError(f"cannot convert {img.mode} image to RGB: {exc}") from None
    rgb.info["full_size"] = (width, height)  # the upright size before any draft reduction
    return rgb


def prepare_image(img: Any, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A PIL image as a miner receives it -> upright 8-bit RGB, or ImageError (a ValueError)
    with a one-line reason; the same checks as decoding a file."""
    if not isinstance(img, Image.Image):
        raise ImageError(f"expected a PIL.Image.Image, got {type(img).__name__}")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(f"image refused: {width}x{height} is over the {max_pixels:,} pixel bound")
    try:
        img.load()
    except Exception as exc:
        raise ImageError(f"corrupt or truncated image ({img.format}): {exc}") from None
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    if min(img.size) < MIN_SIDE:
        raise ImageError(
            f"image too small: {img.size[0]}x{img.size[1]}, the minimum side is {MIN_SIDE} px"
        )
    try:
        return to_rgb(img)
    except Exception as exc:
        raise ImageError(f"cannot convert {img.mode} image to RGB: {exc}") from None

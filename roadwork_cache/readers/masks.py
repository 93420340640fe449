"""Supplied roadwork masks: PNG files (or any image PIL reads) to a binary roadwork mask.

Two kinds are read, both in the upright frame of their image:
- a binary mask: any non-zero pixel is roadwork (0/1, 0/255, mode "1", or colour);
- a per-class indexed image (mode "P", "L" or "I" holding class ids, as semantic
  segmentation datasets such as ROADWork ship them): the pixels whose class is in
  `classes` are roadwork. Without `classes`, every non-zero class is roadwork (0 is
  background).
Every failure is one sentence (`MaskError`), so that the row is marked as having no mask and
extraction goes on.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from roadwork_cache.readers.images import MAX_PIXELS
from roadwork_cache.runtime.errors import UserError

# A mask's aspect may differ from its image's by rounding only.
ASPECT_TOLERANCE = 0.02


class MaskError(ValueError):
    """A supplied mask that cannot be used; the message is the one-line reason."""


def parse_classes(text: str | None) -> tuple[int, ...] | None:
    """'1,2,5-7' -> (1, 2, 5, 6, 7); None or '' -> None (every non-zero class)."""
    if not text or not text.strip():
        return None
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
            if first < 0 or last < first:
                raise ValueError
            out.extend(range(first, last + 1))
    except ValueError:
        raise UserError(
            f"--mask-classes {text!r} must be class ids such as '1,2,5-7' (0 or more)"
        ) from None
    return tuple(sorted(set(out)))


def decode_mask(
    data: bytes | None,
    classes: Sequence[int] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """bool [H, W]: the roadwork pixels of a supplied mask, or MaskError."""
    if not data:
        raise MaskError("empty mask file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        if img.size[0] * img.size[1] > max_pixels:
            raise MaskError(f"mask of {img.size[0]}x{img.size[1]} is over the pixel bound")
        img.load()
    except MaskError:
        raise
    except UnidentifiedImageError:
        raise MaskError("mask is not an image") from None
    except Exception as exc:  # PIL raises many types on damaged files
        raise MaskError(f"unreadable mask: {exc}") from None
    if img.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA"):
        if classes is not None:
            raise MaskError(
                f"a {img.mode} mask holds colours, not class ids; save it as an indexed "
                "(P) or greyscale PNG to select classes"
            )
        colour = np.asarray(img.convert("RGB"))
        return colour.any(axis=2)
    values = np.asarray(img)  # "P" gives palette indices: the class ids
    if values.ndim != 2:
        raise MaskError(f"mask of mode {img.mode} is not a single-channel image")
    if classes is None:
        return values != 0
    return np.isin(values, np.asarray(classes))


def check_mask_size(mask: np.ndarray, width: int, height: int) -> None:
    """A mask must cover the same picture as its image: the same aspect, any resolution."""
    mh, mw = mask.shape
    if abs(mw / mh - width / height) > ASPECT_TOLERANCE * (width / height):
        raise MaskError(f"mask of {mw}x{mh} does not fit its image of {width}x{height}")


def read_mask_ref(value: object, base: Path) -> tuple[bytes | None, str | None]:
    """A mask cell of a manifest or parquet column -> (bytes, None), (None, reason), or
    (None, None) when the row has no mask. A cell holds bytes, a struct {bytes, path} (the
    Hugging Face image feature) or a path relative to `base`."""
    if isinstance(value, dict):
        data = value.get("bytes")
        value = data if data else value.get("path")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, bytes | bytearray):
        return bytes(value), None
    if not isinstance(value, str):
        return None, f"mask cell holds a {type(value).__name__}, not bytes or a path"
    path = base / value.strip()
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, f"mask file not found: {value.strip()}"
    except OSError as exc:
        return None, f"cannot read mask {value.strip()}: {exc.strerror or exc}"

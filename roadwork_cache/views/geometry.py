"""The 12-view geometry of docs/design.md §3, as pure functions of (width, height).

Per image (W x H, s = min(W, H)), each view resized to a square of the view size:
  0      global: the whole image
  1-9    a 3x3 grid of tiles of W/2.5 x H/2.5 at offsets 0, (W - w)/2, W - w (likewise
         down): exactly three tiles per axis with 25 % overlap covering the whole image,
         whatever its aspect
  10     the centre square of side s
  11     the far square of side s: right-aligned on a landscape image, bottom-aligned on a
         portrait one (there the right-aligned square would repeat the centre one, and the
         road is at the bottom)
Tiles and the global view keep the image's aspect, so the resize squashes them all by the
same factor.
"""

from __future__ import annotations

from typing import NamedTuple

from PIL import Image

LAYOUT = "grid3x3-v1"
N_VIEWS = 12
VIEW_NAMES: tuple[str, ...] = (
    "global",
    *(f"tile_r{r}c{c}" for r in range(3) for c in range(3)),
    "centre_square",
    "far_square",
)
TILE_FRACTION = 1 / 2.5


class Box(NamedTuple):
    """A crop box in pixel coordinates, as PIL takes it: (left, top, right, bottom)."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top


def tile_offsets(length: float, tile: float) -> tuple[float, float, float]:
    """Three tile starts along one axis: flush start, centred, flush end."""
    return (0.0, (length - tile) / 2.0, length - tile)


def view_boxes(width: int, height: int) -> list[Box]:
    """The 12 crop boxes of an image of the given size, in view order."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    w, h = float(width), float(height)
    boxes = [Box(0.0, 0.0, w, h)]
    tw, th = w * TILE_FRACTION, h * TILE_FRACTION
    for top in tile_offsets(h, th):
        for left in tile_offsets(w, tw):
            boxes.append(Box(left, top, left + tw, top + th))
    s = min(w, h)
    cx, cy = (w - s) / 2.0, (h - s) / 2.0
    boxes.append(Box(cx, cy, cx + s, cy + s))
    if w >= h:
        boxes.append(Box(w - s, cy, w, cy + s))
    else:
        boxes.append(Box(cx, h - s, cx + s, h))
    return boxes


def render_views(img: Image.Image, size: int) -> list[Image.Image]:
    """Cut and resize the 12 views of an RGB image to size x size (bicubic, antialiased).

    PIL's resize with a float box crops and resamples in one pass, so a tile is never
    rounded to whole pixels first.
    """
    return [
        img.resize((size, size), resample=Image.Resampling.BICUBIC, box=tuple(box))
        for box in view_boxes(*img.size)
    ]

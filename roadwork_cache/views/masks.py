"""Roadwork masks through the variants and the views (docs/design.md §4).

A mask is a float array [H, W] in [0, 1] (the share of roadwork in each pixel) of the same
size as the image `apply_variant` receives. Each variant's geometry is applied to it exactly
as to the image, from the same recipe and the same seeded parameters:
- `tta-K`: the same operations (`variants.tta_ops`), on the array;
- `aug-K`: albumentations' geometry stage with the same seed, the mask warped with nearest
  neighbours (`augment.augment_mask`);
- `natix-K`: torchvision's rotation (nearest, as the image) and the crop of
  `challenge.natix_params`; the final resize to 224 px is a pure scaling, so it is not done
  to the mask at all: the views are mapped back into the mask's frame instead;
- `natix-L+tta-K`: the mask of natix-L (the same seed as natix-L alone), scaled to the
  challenge's 224 px, then tta-K's operations.
Then each of the 12 views is reduced to its share of roadwork pixels on a G x G grid of
cells, row-major, computed exactly (pixel areas, fractional boxes included) from an integral
image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from roadwork_cache.views.augment import augment_mask
from roadwork_cache.views.challenge import CHALLENGE_SIZE, centre_square_box, natix_params
from roadwork_cache.views.geometry import N_VIEWS, view_boxes
from roadwork_cache.views.variants import (
    composed_parts,
    fraction_box,
    rng_for,
    split_name,
    tta_ops,
    zoom_out_pads,
)

DEFAULT_GRID = 4


def fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A mask (bool or float [H, W]) brought to `size` (width, height) as float32 shares:
    area averaging when it shrinks (a cell's value is the share of the pixels it covers),
    nearest neighbours otherwise."""
    import cv2

    out = np.ascontiguousarray(mask, dtype=np.float32)
    h, w = out.shape
    if (w, h) == tuple(size):
        return out
    shrink = size[0] <= w and size[1] <= h
    return cv2.resize(
        out, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST
    )


def tta_mask(mask: np.ndarray, k: int) -> np.ndarray:
    """The mask of tta-k: the image's operations, on the array."""
    for op in tta_ops(k):
        h, w = mask.shape
        if op[0] == "mirror":
            mask = mask[:, ::-1]
        elif op[0] == "crop":
            left, top, right, bottom = fraction_box(w, h, op[1], op[2])
            mask = mask[top:bottom, left:right]
        else:
            pad_x, pad_y = zoom_out_pads(w, h, op[1])
            mask = np.pad(mask, ((pad_y, pad_y), (pad_x, pad_x)), mode="reflect")
    return np.ascontiguousarray(mask)


def challenge_mask(mask: np.ndarray, params: dict) -> np.ndarray:
    """The mask of a natix challenge in the frame of its crop (the 224 px challenge is
    this crop resized): level 0 the centre square; levels 1-3 the rotation then the crop."""
    h, w = mask.shape
    if params["level"] == 0:
        left, top, right, bottom = centre_square_box(w, h)
        return mask[top:bottom, left:right]
    import torch
    import torchvision.transforms.functional as TF

    # The image is rotated as a [3, H, W] tensor with torchvision's default (nearest, no
    # expansion, fill 0): the same call on [1, H, W] samples the same source pixels.
    rotated = TF.rotate(torch.from_numpy(np.ascontiguousarray(mask))[None], params["angle"])[0]
    top, left, ch, cw = params["crop"]
    return rotated[top : top + ch, left : left + cw].numpy()


def variant_mask(
    img: Image.Image, mask: np.ndarray, name: str, sample_id: str
) -> tuple[np.ndarray, tuple[int, int]]:
    """(mask, (width, height) of the variant's image): the variant's image is the returned
    mask's frame scaled to that size. `img` is the image `apply_variant(img, name,
    sample_id)` receives and `mask` float [H, W] of its size."""
    if mask.shape != (img.height, img.width):
        raise ValueError(f"mask {mask.shape} does not have the image's size {img.size}")
    kind, k = split_name(name)
    if kind == "clean":
        return mask, img.size
    if kind == "natix+tta":  # as apply_variant: natix-L alone (its own seed), then tta-K
        challenge, transform = composed_parts(name)
        frame, size = variant_mask(img, mask, challenge, sample_id)
        # tta-K crops and pads the 224 px challenge in whole pixels: brought to that size
        # first, the mask takes exactly the image's boxes and borders.
        out = tta_mask(fit_mask(frame, size), split_name(transform)[1])
        return out, (out.shape[1], out.shape[0])
    if kind == "tta":
        out = tta_mask(mask, k)
        return out, (out.shape[1], out.shape[0])
    rng = rng_for(sample_id, name)
    if kind == "aug":
        return augment_mask(img, mask, rng), img.size  # albumentations keeps the size
    params = natix_params(k % 4, img.width, img.height, rng)  # as natix_challenge draws them
    return challenge_mask(mask, params), (CHALLENGE_SIZE, CHALLENGE_SIZE)


def _integral_at(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The integral of the mask over [0, x] x [0, y] at fractional points: the integral
    image interpolated bilinearly, which is exact for a mask constant on each pixel."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    x, y = np.clip(x, 0, w), np.clip(y, 0, h)
    i, j = np.minimum(np.floor(x).astype(int), w - 1), np.minimum(np.floor(y).astype(int), h - 1)
    fx, fy = x - i, y - j
    return (
        table[j, i] * (1 - fx) * (1 - fy)
        + table[j, i + 1] * fx * (1 - fy)
        + table[j + 1, i] * (1 - fx) * fy
        + table[j + 1, i + 1] * fx * fy
    )


def view_coverage(mask: np.ndarray, size: tuple[int, int], grid: int = DEFAULT_GRID) -> np.ndarray:
    """float32 [12, grid * grid] in [0, 1]: the share of roadwork in each cell of each view
    of an image of `size` (width, height) whose frame is `mask` scaled; cells row-major."""
    h, w = mask.shape
    table = np.zeros((h + 1, w + 1), np.float64)
    table[1:, 1:] = np.asarray(mask, np.float64).cumsum(0).cumsum(1)
    boxes = np.array(view_boxes(*size), np.float64)  # [12, 4] left, top, right, bottom
    t = np.linspace(0.0, 1.0, grid + 1)
    xs = (boxes[:, :1] + (boxes[:, 2:3] - boxes[:, :1]) * t) * (w / size[0])  # [12, G+1]
    ys = (boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * t) * (h / size[1])
    corners = _integral_at(table, xs[:, None, :], ys[:, :, None])  # [12, G+1 (y), G+1 (x)]
    sums = corners[:, 1:, 1:] - corners[:, :-1, 1:] - corners[:, 1:, :-1] + corners[:, :-1, :-1]
    areas = np.diff(ys)[:, :, None] * np.diff(xs)[:, None, :]
    out = np.clip(sums / np.maximum(areas, 1e-12), 0.0, 1.0)
    return out.reshape(N_VIEWS, grid * grid).astype(np.float32)


def mask_coverages(
    img: Image.Image,
    mask: np.ndarray,
    variants: Sequence[str],
    sample_id: str,
    grid: int = DEFAULT_GRID,
) -> np.ndarray:
    """float32 [len(variants), 12, grid * grid]: the coverage of every variant's views, for
    the image `apply_variant` receives and a mask of any size over the same picture."""
    fitted = fit_mask(mask, img.size)
    return np.stack(
        [view_coverage(*variant_mask(img, fitted, name, sample_id), grid) for name in variants]
    )

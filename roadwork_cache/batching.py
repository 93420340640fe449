"""Decoding and view cutting in DataLoader workers, so the CPU work overlaps the GPU.

A worker turns a `Sample` into uint8 views [V, S, S, 3] (4x smaller than float to pin and
copy); normalisation happens on the device, inside the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from roadwork_cache.data.images import MAX_PIXELS, ImageError, decode_image
from roadwork_cache.data.schema import Sample
from roadwork_cache.variants import apply_variant
from roadwork_cache.views import N_VIEWS, TILE_FRACTION, render_views


@dataclass
class DecodedItem:
    index: int
    views: np.ndarray | None  # uint8 [V, S, S, 3], None on error
    width: int | None
    height: int | None
    error: str | None


@dataclass
class ViewBatch:
    indices: list[int]  # positions (within the shard) of the rows in `views`
    views: torch.Tensor  # uint8 [b, V, S, S, 3]
    items: list[DecodedItem]  # every row of the batch, errors included


class ViewDataset(Dataset):
    """Samples -> decoded, upright RGB -> the 12 views at `view_size`."""

    def __init__(
        self,
        samples: Sequence[Sample],
        view_size: int,
        variant: str = "clean",
        max_pixels: int = MAX_PIXELS,
    ):
        self.samples = samples
        self.view_size = view_size
        self.variant = variant
        self.max_pixels = max_pixels
        # The smallest view is a tile of 1/2.5 of each side: keep it at least view_size.
        self.draft_side = int(np.ceil(view_size / TILE_FRACTION))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> DecodedItem:
        sample = self.samples[index]
        if sample.error:
            return DecodedItem(index, None, None, None, sample.error)
        try:
            img = decode_image(sample.image_bytes, self.max_pixels, self.draft_side)
        except ImageError as exc:
            return DecodedItem(index, None, None, None, str(exc))
        # Record the size of the full image, not of a reduced-scale JPEG draft.
        width, height = img.info.get("full_size", img.size)
        img = apply_variant(img, self.variant, sample.id)
        views = np.stack([np.asarray(v) for v in render_views(img, self.view_size)])
        return DecodedItem(index, views, width, height, None)


def collate(items: list[DecodedItem]) -> ViewBatch:
    ok = [it for it in items if it.views is not None]
    views = (
        torch.from_numpy(np.stack([it.views for it in ok]))
        if ok
        else torch.empty((0, N_VIEWS, 0, 0, 3), dtype=torch.uint8)
    )
    return ViewBatch([it.index for it in ok], views, items)


def view_loader(
    samples: Sequence[Sample],
    view_size: int,
    batch_size: int,
    workers: int,
    pin: bool,
    variant: str = "clean",
) -> DataLoader:
    return DataLoader(
        ViewDataset(samples, view_size, variant),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        prefetch_factor=4 if workers > 0 else None,
    )

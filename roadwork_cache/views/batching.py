"""Decoding and view cutting in DataLoader workers, so the CPU work overlaps the GPU.

A worker turns a (variant, `Sample`) pair into uint8 views [V, S, S, 3] (4x smaller than
float to pin and copy); normalisation happens on the device, inside the backbone. One loader
serves every variant of a shard, so its workers start once per shard, not once per variant.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from roadwork_cache.readers.images import MAX_PIXELS, ImageError, decode_image
from roadwork_cache.readers.schema import Sample
from roadwork_cache.runtime.processes import worker_init_fn
from roadwork_cache.views.geometry import N_VIEWS, TILE_FRACTION, render_views
from roadwork_cache.views.variants import apply_variant, full_resolution, prepare_variants


@dataclass
class DecodedItem:
    index: int  # row within the samples
    views: np.ndarray | None  # uint8 [V, S, S, 3], None on error
    width: int | None
    height: int | None
    error: str | None
    variant: str = "clean"


@dataclass
class ViewBatch:
    variant: str  # every row of a batch has the same variant
    indices: list[int]  # rows (within the samples) of the images in `views`
    views: torch.Tensor  # uint8 [b, V, S, S, 3]
    items: list[DecodedItem]  # every row of the batch, errors included


class ViewDataset(Dataset):
    """Index i -> row i % n of `samples` under variant i // n: decoded, upright RGB, the
    variant applied, then the 12 views at `view_size`."""

    def __init__(
        self,
        samples: Sequence[Sample],
        view_size: int,
        variants: Sequence[str] = ("clean",),
        max_pixels: int = MAX_PIXELS,
    ):
        self.samples = samples
        self.view_size = view_size
        self.variants = list(variants)
        self.max_pixels = max_pixels
        # The smallest view is a tile of 1/2.5 of each side: keep it at least view_size.
        self.draft_side = int(np.ceil(view_size / TILE_FRACTION))

    def __len__(self) -> int:
        return len(self.samples) * len(self.variants)

    def __getitem__(self, index: int) -> DecodedItem:
        variant, row = self.variants[index // len(self.samples)], index % len(self.samples)
        sample = self.samples[row]
        if sample.error:
            return DecodedItem(row, None, None, None, sample.error, variant)
        try:
            # Challenges and TTA crops are rendered from the full image, as the validator
            # renders them; clean and aug views only need the draft decode's resolution.
            draft = None if full_resolution(variant) else self.draft_side
            img = decode_image(sample.image_bytes, self.max_pixels, draft)
        except ImageError as exc:
            return DecodedItem(row, None, None, None, str(exc), variant)
        # Record the size of the full image, not of a reduced-scale JPEG draft.
        width, height = img.info.get("full_size", img.size)
        img = apply_variant(img, variant, sample.id)
        views = np.stack([np.asarray(v) for v in render_views(img, self.view_size)])
        return DecodedItem(row, views, width, height, None, variant)


def variant_batches(n_rows: int, n_variants: int, batch_size: int) -> list[list[int]]:
    """Dataset indices in batches of at most `batch_size`, variant after variant, so that no
    batch mixes two variants and each variant's rows come in order."""
    return [
        list(range(v * n_rows + lo, v * n_rows + min(lo + batch_size, n_rows)))
        for v in range(n_variants)
        for lo in range(0, n_rows, batch_size)
    ]


def collate(items: list[DecodedItem]) -> ViewBatch:
    ok = [it for it in items if it.views is not None]
    views = (
        torch.from_numpy(np.stack([it.views for it in ok]))
        if ok
        else torch.empty((0, N_VIEWS, 0, 0, 3), dtype=torch.uint8)
    )
    return ViewBatch(items[0].variant, [it.index for it in ok], views, items)


def view_loader(
    samples: Sequence[Sample],
    view_size: int,
    batch_size: int,
    workers: int,
    pin: bool,
    variants: Sequence[str] = ("clean",),
) -> DataLoader:
    """Batches (`ViewBatch`) of every variant in turn, each variant's rows in order."""
    # Import what the recipes need before the workers fork, so they share it.
    prepare_variants(variants)
    return DataLoader(
        ViewDataset(samples, view_size, variants),
        batch_sampler=variant_batches(len(samples), len(variants), batch_size),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=worker_init_fn() if workers > 0 else None,  # die with the run
    )


def image_views(
    img: Image.Image, variants: tuple[str, ...] | list[str], view_size: int, sample_id: str = ""
) -> np.ndarray:
    """RGB image -> uint8 [T, 12, S, S, 3]: the 12 views of each variant, in order."""

    def one(name: str) -> np.ndarray:
        return np.stack(
            [np.asarray(v) for v in render_views(apply_variant(img, name, sample_id), view_size)]
        )

    if len(variants) == 1 or get_worker_info() is not None:
        # One variant, or a DataLoader worker: the workers already use the cores.
        return np.stack([one(name) for name in variants])
    # PIL releases the GIL while it resizes: TTA variants are cut in parallel threads (nine
    # variants of a 224 px challenge take about 0.3 s on one core).
    return np.stack(list(_view_pool().map(one, variants)))


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _view_pool() -> ThreadPoolExecutor:
    """This process's pool: a forked child inherits the parent's pool object but not its
    threads, and work sent to it would wait forever."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (
            os.getpid(),
            ThreadPoolExecutor(
                max_workers=min(16, os.cpu_count() or 1), thread_name_prefix="roadwork-views"
            ),
        )
    return _POOL[1]


def draft_side(view_size: int) -> int:
    """The side a JPEG may be draft-decoded down to, exactly as `roadwork extract` does."""
    return int(np.ceil(view_size / TILE_FRACTION))

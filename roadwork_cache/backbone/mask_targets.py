"""Roadwork mask targets of a shard: per image a binary mask (supplied, or SAM 3 from text
prompts), carried through every variant and cut into the 12 views' G x G coverage grids.

The image is decoded exactly as the feature pass decodes it (the same JPEG draft scale), so
each variant's seeded geometry is drawn for the same image size and the mask follows the
features' pixels. SAM 3 sees the image at full resolution, and its mask is produced at the
working size directly. A row without a usable mask is marked as such, never given a mask.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from roadwork_cache.backbone.segmenter import DEFAULT_PROMPTS, Segmenter
from roadwork_cache.readers.images import MAX_PIXELS, ImageError, decode_image
from roadwork_cache.readers.masks import MaskError, check_mask_size, decode_mask
from roadwork_cache.readers.schema import Sample
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.views.batching import draft_side
from roadwork_cache.views.masks import DEFAULT_GRID, mask_coverages

MASK_DTYPES = ("uint8", "float16")
SAM3 = "sam3"
COLUMN_PREFIX = "column:"
NO_MASK = "no mask supplied"


@dataclass(frozen=True)
class MaskSpec:
    """Where masks come from and how they are stored: `source` is 'sam3' or 'column:NAME'."""

    source: str
    grid: int = DEFAULT_GRID
    dtype: str = "uint8"
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    classes: tuple[int, ...] | None = None
    segmenter: str | None = None
    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.source != SAM3 and not (
            self.source.startswith(COLUMN_PREFIX) and self.source[len(COLUMN_PREFIX) :].strip()
        ):
            raise UserError(f"--masks {self.source!r} must be 'sam3' or 'column:NAME'")
        if self.source == SAM3 and not self.segmenter:
            raise UserError("--masks sam3 needs --segmenter, a local SAM 3 folder")
        if not 1 <= self.grid <= 64:
            raise UserError(f"--mask-grid must be 1 to 64, not {self.grid}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise UserError(f"--mask-score must lie in [0, 1), not {self.score_threshold}")
        if self.dtype not in MASK_DTYPES:
            raise UserError(f"--mask-dtype must be one of {', '.join(MASK_DTYPES)}")

    @property
    def column(self) -> str | None:
        """The column of supplied masks; None for SAM 3."""
        return None if self.source == SAM3 else self.source[len(COLUMN_PREFIX) :].strip()

    def attrs(self, segmenter: Segmenter | None) -> dict[str, Any]:
        """What the cache records about its masks (store.attrs checks them on resume)."""
        return {
            "source": self.source,
            "grid": self.grid,
            "dtype": self.dtype,
            "prompts": list(self.prompts) if self.source == SAM3 else None,
            "classes": None if self.classes is None else list(self.classes),
            "segmenter": segmenter.info if segmenter is not None else None,
        }


@dataclass
class ShardMasks:
    coverage: np.ndarray  # float32 [variants, n, 12, G*G] in [0, 1], zeros where absent
    present: np.ndarray  # bool [n]: the row has a mask
    reasons: Counter = field(default_factory=Counter)  # why rows have none


@dataclass
class _Row:
    image: Image.Image | None = None  # as the feature pass decodes it
    mask: np.ndarray | None = None  # supplied mask, any resolution
    full: Image.Image | None = None  # the full-resolution image, for SAM 3
    reason: str | None = None


def _load(sample: Sample, spec: MaskSpec, view_size: int, max_pixels: int) -> _Row:
    if sample.error:
        return _Row(reason="image unusable")
    if spec.source != SAM3 and sample.mask is None:
        return _Row(reason=sample.mask_error or NO_MASK)
    try:
        image = decode_image(sample.image_bytes, max_pixels, draft_side(view_size))
    except ImageError:
        return _Row(reason="image unusable")
    width, height = image.info.get("full_size", image.size)
    if spec.source == SAM3:
        full = image
        if image.size != (width, height):  # a reduced JPEG draft: SAM 3 sees every pixel
            try:
                full = decode_image(sample.image_bytes, max_pixels)
            except ImageError:
                return _Row(reason="image unusable")
        return _Row(image=image, full=full)
    try:
        mask = decode_mask(sample.mask, spec.classes, max_pixels)
        check_mask_size(mask, width, height)
    except MaskError as exc:
        return _Row(reason=str(exc))
    return _Row(image=image, mask=mask)


def shard_masks(
    samples: Sequence[Sample],
    variants: Sequence[str],
    view_size: int,
    spec: MaskSpec,
    segmenter: Segmenter | None = None,
    threads: int = 1,
    max_pixels: int = MAX_PIXELS,
    advance: Callable[[int], None] | None = None,
) -> ShardMasks:
    """The coverage of every variant's views for every sample (decoding and geometry in
    `threads` threads; SAM 3 in this one)."""
    n = len(samples)
    out = ShardMasks(np.zeros((len(variants), n, 12, spec.grid**2), np.float32), np.zeros(n, bool))
    step = max(4, 2 * threads)
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="roadwork-masks") as pool:
        for lo in range(0, n, step):
            chunk = list(range(lo, min(lo + step, n)))
            rows = list(pool.map(lambda i: _load(samples[i], spec, view_size, max_pixels), chunk))
            for row in rows:
                if row.full is not None:
                    row.mask = segmenter.segment(row.full, spec.prompts, size=row.image.size)
                    row.full = None

            def cover(i: int, row: _Row) -> np.ndarray:
                return mask_coverages(row.image, row.mask, variants, samples[i].id, spec.grid)

            ok = [(i, row) for i, row in zip(chunk, rows, strict=True) if row.reason is None]
            for (i, _), cov in zip(ok, pool.map(lambda p: cover(*p), ok), strict=True):
                out.coverage[:, i] = cov
                out.present[i] = True
            out.reasons.update(row.reason for row in rows if row.reason is not None)
            if advance is not None:
                advance(len(chunk))
    return out

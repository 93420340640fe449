"""The cache as stage two sees it: labelled rows, features per variant, metadata tensors.

Everything is loaded into memory once (8.5 k images x 12 views x 1280 x 2 bytes is 260 MB a
variant), so an epoch is index arithmetic, never disk reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadwork_cache.heads import HeadConfig, MetadataBatch
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.progress import console
from roadwork_cache.store.attrs import CacheAttrs
from roadwork_cache.store.cache import Cache

# Metadata fields a head can read, with the samples.parquet column that feeds each, and the
# columns the leakage audit also looks at (never fed to a head).
HEAD_FIELDS = {
    "gps": "gps",
    "weather": "weather",
    "daytime": "daytime",
    "scene": "scene",
    "text": "description",
}
AUDIT_ONLY = ("city", "alteration")


@dataclass
class CacheData:
    """The usable (status ok) rows of a cache, in cache order."""

    root: Path
    meta: CacheAttrs
    rows: np.ndarray  # [n] positions in the cache
    columns: dict[str, list]  # samples.parquet columns restricted to `rows`
    labels: np.ndarray  # [n] int64, -1 where unknown
    features: dict[str, np.ndarray]  # variant -> float16 [n, V, D]
    text: np.ndarray  # [n, 384] float16
    text_mask: np.ndarray  # [n] bool
    # roadwork masks of the variants that have them: variant -> float16 [n, V, G*G] shares
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    mask_present: np.ndarray | None = None  # [n] bool, None for a cache without masks

    @property
    def mask_grid(self) -> int:
        """G of the cache's G x G mask grid; 0 without masks."""
        return int((self.meta.masks or {}).get("grid", 0)) if self.masks else 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        return self.columns["id"]

    @property
    def in_dim(self) -> int:
        return int(self.meta.feature_dim)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the cache beyond its path (a rebuilt cache at the same path
        differs): recorded by every model trained on it."""
        return {
            "path": str(Path(self.root).resolve()),
            "created": self.meta.created,
            "n_rows": self.meta.n_rows,
            "feature_dim": self.in_dim,
            "backbone": self.meta.backbone.get("preset"),
            "weights_sha256": self.meta.backbone.get("weights_sha256"),
        }

    def split_names(self) -> np.ndarray:
        return np.array([s or "" for s in self.columns["split"]], dtype=object)

    def other_splits(self) -> dict[str, int]:
        """Rows per split name other than train / val / test (they train, like train)."""
        names, counts = np.unique(self.split_names(), return_counts=True)
        return {
            str(n): int(c)
            for n, c in zip(names, counts, strict=True)
            if n not in ("", "train", "val", "test")
        }

    def gps(self) -> tuple[np.ndarray, np.ndarray]:
        lat = np.array([np.nan if v is None else v for v in self.columns["gps_lat"]], float)
        lon = np.array([np.nan if v is None else v for v in self.columns["gps_lon"]], float)
        return lat, lon

    def groups(self) -> np.ndarray:
        return np.array(self.columns["vid_id"], dtype=object)

    def audit_table(self) -> dict[str, list]:
        """Metadata fields as the leakage audit takes them (present / value per row)."""
        lat, _ = self.gps()
        out: dict[str, list] = {
            "gps": [None if np.isnan(v) else "present" for v in lat],
            "weather": self.columns["weather"],
            "daytime": self.columns["daytime"],
            "scene": self.columns["scene"],
            "text": [t if t else None for t in self.columns["description"]],
        }
        for name in AUDIT_ONLY:
            out[name] = self.columns[name]
        return out


def load_cache_data(path: str | Path, variants: list[str] | None = None) -> CacheData:
    """Open a finished cache and load the ok rows of the given variants (default: all)."""
    cache = Cache.open(path)
    meta = cache.meta
    if not meta.complete:
        raise UserError(f"cache {path} is not complete; finish it with `roadwork extract` first")
    table = cache.samples().to_pydict()
    ok = np.array([s == "ok" for s in table["status"]])
    rows = np.flatnonzero(ok)
    if len(rows) == 0:
        raise UserError(f"cache {path} has no rows with status ok")
    available = cache.variants()
    variants = variants or available
    missing = [v for v in variants if v not in available]
    if missing:
        raise UserError(
            f"cache {path} has no variant {missing[0]!r} (it has: {', '.join(available)})"
        )
    features = {v: cache.features(v)[rows] for v in variants}
    text, text_mask = cache.text()
    columns = {k: [v[i] for i in rows] for k, v in table.items()}
    labels = np.array([-1 if v is None else int(v) for v in columns["label"]], dtype=np.int64)
    data = CacheData(Path(path), meta, rows, columns, labels, features, text[rows], text_mask[rows])
    with_masks = [v for v in variants if v in cache.mask_variants()]
    if with_masks:
        data.masks = {v: cache.masks(v)[rows].astype(np.float16) for v in with_masks}
        data.mask_present = cache.mask_present()[rows]
    return data


def labelled_rows(data: CacheData) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test): labelled rows to train and validate on, and the labelled test split,
    which only ever judges. One clear sentence when there is nothing to train on."""
    labelled = np.flatnonzero(data.labels >= 0)
    if len(labelled) == 0:
        raise UserError(f"cache {data.root} has no labelled rows to train on")
    is_test = np.isin(data.split_names()[labelled], ["test"])
    test, pool = labelled[is_test], labelled[~is_test]
    if len(pool) == 0:
        raise UserError(f"cache {data.root} has no labelled rows outside the test split")
    return pool, test


def random_backbone(data: CacheData) -> bool:
    """True for a cache made with random backbone weights (the tiny preset), said once on
    the console: its scores demonstrate the machinery, not quality."""
    if data.meta.random_init:
        console.print(
            "[yellow]warning: this cache was made with random backbone weights; "
            "scores demonstrate the machinery, not quality"
        )
    return data.meta.random_init


def vocabularies(data: CacheData) -> dict[str, tuple[str, ...]]:
    """The tag values seen in the cache, sorted: the head's embedding tables."""
    weather = sorted({w for ws in data.columns["weather"] for w in (ws or [])})
    daytime = sorted({d for d in data.columns["daytime"] if d})
    scene = sorted({s for s in data.columns["scene"] if s})
    return {
        "weather_vocab": tuple(weather) or ("unknown",),
        "daytime_vocab": tuple(daytime) or ("unknown",),
        "scene_vocab": tuple(scene) or ("unknown",),
    }


def metadata_batch(config: HeadConfig, data: CacheData) -> MetadataBatch:
    """All rows' metadata as tensors; fields the config disables are NULL throughout."""
    lat, lon = data.gps()
    gps = [None if np.isnan(a) else (a, b) for a, b in zip(lat, lon, strict=True)]
    return MetadataBatch.from_values(
        config,
        gps=gps,
        weather=[w or [] for w in data.columns["weather"]],
        daytime=data.columns["daytime"],
        scene=data.columns["scene"],
        text=torch.from_numpy(data.text.astype(np.float32)),
        text_mask=torch.from_numpy(data.text_mask),
    )

"""The feature cache: a Zarr v3 group plus `samples.parquet`. The only module that knows Zarr.

Layout of a cache folder (docs/design.md §4):
  zarr.json                 group attributes: format version, backbone, views, recipes, ...
  features/<variant>/       float16 [N, V, D], chunks of a few rows, shards of `shard_rows`
  text/, text_mask/         float16 [N, 384], bool [N]
  masks/<variant>/          roadwork share per view and grid cell [N, V, G*G], uint8 (share
                            x 255, rounded) or float16; cells row-major (optional)
  mask_present/             bool [N]: the row has a mask (rows without are all zeros)
  samples.parquet           one row per image in cache order (written by `finalize`)
  parts/samples-XXXXX.parquet   the rows of one shard, merged into samples.parquet
  progress/<array>/XXXXX.done   a shard is done only once its marker exists

A shard is the unit of writing and of resume: it is written whole (two writers into one
Zarr shard lose data), and its marker is created atomically after the data, so a shard cut
off half-written is never taken as done.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.store.attrs import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CacheAttrs,
    check_mask_attrs,
)
from roadwork_cache.store.fastread import read_whole
from roadwork_cache.store.lock import LOCK_FILE
from roadwork_cache.store.samples import SAMPLES_FILE, SAMPLES_SCHEMA

TEXT_DIM = 384
MASKS = "masks"
MASK_PRESENT = "mask_present"


@dataclass(frozen=True)
class ShardRange:
    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def shard_ranges(n_rows: int, shard_rows: int) -> list[ShardRange]:
    return [
        ShardRange(i, start, min(start + shard_rows, n_rows))
        for i, start in enumerate(range(0, n_rows, shard_rows))
    ]


def checksum(*arrays: np.ndarray) -> str:
    """sha256 of the bytes written: the done-marker's content, checked by `cache verify`."""
    digest = hashlib.sha256()
    for arr in arrays:
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Cache:
    """A handle on one cache folder."""

    def __init__(self, root: Path, group: zarr.Group):
        self.root = root
        self.group = group

    # ---- creation and opening -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: str | Path,
        *,
        n_rows: int,
        n_views: int,
        feature_dim: int,
        attrs: dict[str, Any],
        shard_rows: int = 1024,
        chunk_rows: int = 16,
    ) -> Cache:
        """Create an empty cache; refuses to overwrite a folder that is not empty."""
        root = Path(root)
        if root.exists() and any(p.name != LOCK_FILE for p in root.iterdir()):
            raise UserError(f"{root} exists and is not an empty cache folder")
        if n_rows < 1:
            raise UserError("a cache needs at least one row")
        chunk_rows = max(1, min(chunk_rows, shard_rows))
        shard_rows -= shard_rows % chunk_rows  # a shard holds a whole number of chunks
        meta = CacheAttrs.from_dict(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "n_rows": n_rows,
                "n_views": n_views,
                "feature_dim": feature_dim,
                "shard_rows": shard_rows,
                "chunk_rows": chunk_rows,
                **attrs,
            },
            root,
        )
        # create_group, never open_group(mode="w"): that empties the folder, and with it the
        # writer's lock file, letting a second writer in.
        group = zarr.create_group(root, overwrite=False)
        group.attrs.update(meta.to_dict())
        group.create_group("features")
        cache = cls(root, group)
        cache._create_array("text", (n_rows, TEXT_DIM), "float16")
        cache._create_array("text_mask", (n_rows,), "bool")
        return cache

    @classmethod
    def open(cls, root: str | Path, mode: str = "r") -> Cache:
        """Open an existing cache and check its format, in one clear sentence if wrong."""
        root = Path(root)
        if not root.exists():
            raise UserError(f"cache {root} does not exist")
        if not root.is_dir():
            raise UserError(f"cache {root} is a file, not a cache folder")
        if not (root / "zarr.json").is_file():
            raise UserError(f"{root} is not a roadwork cache (no zarr.json)")
        try:
            group = zarr.open_group(root, mode=mode)
        except Exception as exc:
            raise UserError(f"cannot open cache {root}: {exc}") from None
        CacheAttrs.from_dict(dict(group.attrs), root)  # one sentence when it is not ours
        return cls(root, group)

    def _create_array(self, path: str, shape: tuple[int, ...], dtype: str) -> None:
        rest = shape[1:]
        self.group.create_array(
            path,
            shape=shape,
            dtype=dtype,
            chunks=(self.meta.chunk_rows, *rest),
            shards=(self.meta.shard_rows, *rest),
            # float16 features barely compress; skipping the codec keeps full reads at disk
            # speed (see bench/cache_io.py).
            compressors=None,
            fill_value=0,
        )

    # ---- attributes ------------------------------------------------------------------------

    @property
    def meta(self) -> CacheAttrs:
        """The attributes, typed (see `store.attrs`)."""
        return CacheAttrs.from_dict(dict(self.group.attrs), self.root)

    @property
    def attrs(self) -> dict[str, Any]:
        """The attributes as stored (JSON)."""
        return dict(self.group.attrs)

    def update_attrs(self, **values: Any) -> None:
        unknown = sorted(set(values) - CacheAttrs.keys())
        if unknown:
            raise ValueError(f"not cache attributes: {', '.join(unknown)}")
        self.group.attrs.update(values)

    @property
    def n_rows(self) -> int:
        return self.meta.n_rows

    def shards(self) -> list[ShardRange]:
        return shard_ranges(self.n_rows, self.meta.shard_rows)

    # ---- variants --------------------------------------------------------------------------

    def variants(self) -> list[str]:
        return sorted(name for name, _ in self.group["features"].arrays())

    def ensure_variant(self, name: str) -> None:
        if name not in self.variants():
            meta = self.meta
            self._create_array(
                f"features/{name}",
                (meta.n_rows, meta.n_views, meta.feature_dim),
                "float16",
            )

    # ---- roadwork masks ------------------------------------------------------------------

    def mask_variants(self) -> list[str]:
        """Variants with a masks array."""
        if MASKS not in self.group:
            return []
        return sorted(name for name, _ in self.group[MASKS].arrays())

    def record_masks(self, attrs: dict[str, Any], variants: list[str]) -> None:
        """Record the mask settings (one sentence when the cache holds masks made
        otherwise) and create the masks arrays of `variants`."""
        check_mask_attrs(self.root, self.meta.masks, attrs)
        self.update_attrs(masks=attrs)
        for name in variants:
            self.ensure_masks(name)

    def ensure_masks(self, variant: str) -> None:
        """The masks array of `variant` (and the presence array), as the attributes'
        `masks` record says (set them first)."""
        meta = self.meta
        if not meta.masks:
            raise ValueError("record the masks attributes before creating mask arrays")
        if MASKS not in self.group:
            self.group.create_group(MASKS)
        if variant not in self.mask_variants():
            cells = int(meta.masks["grid"]) ** 2
            self._create_array(
                f"{MASKS}/{variant}", (meta.n_rows, meta.n_views, cells), meta.masks["dtype"]
            )
        if MASK_PRESENT not in self.group:
            self._create_array(MASK_PRESENT, (meta.n_rows,), "bool")

    def write_masks(self, variant: str, shard: ShardRange, coverage: np.ndarray) -> None:
        """Write one whole shard of `masks/<variant>` (shares in [0, 1]) and mark it done."""
        meta = self.meta
        array = self.group[f"{MASKS}/{variant}"]
        expected = (len(shard), *array.shape[1:])
        if coverage.shape != expected:
            raise ValueError(f"shard {shard.index} has shape {coverage.shape}, not {expected}")
        share = np.clip(np.nan_to_num(coverage, nan=0.0), 0.0, 1.0)
        if meta.masks["dtype"] == "uint8":
            data = np.round(share * 255.0).astype(np.uint8)
        else:
            data = share.astype(np.float16)
        array[shard.start : shard.stop] = data
        _atomic_write(self._marker(f"{MASKS}/{variant}", shard.index), checksum(data))

    def write_mask_present(self, shard: ShardRange, present: np.ndarray) -> None:
        data = np.asarray(present, bool)
        self.group[MASK_PRESENT][shard.start : shard.stop] = data
        _atomic_write(self._marker(MASK_PRESENT, shard.index), checksum(data))

    def masks(self, variant: str = "clean") -> np.ndarray:
        """A whole variant's masks, float32 [N, V, G*G] shares in [0, 1]."""
        if variant not in self.mask_variants():
            have = ", ".join(self.mask_variants()) or "none"
            raise UserError(f"cache {self.root} has no masks of {variant!r} (it has: {have})")
        data = read_whole(self.group[f"{MASKS}/{variant}"])
        if data.dtype == np.uint8:
            return data.astype(np.float32) / 255.0
        return data.astype(np.float32)

    def mask_present(self) -> np.ndarray:
        """bool [N]: which rows have a mask (all False in a cache without masks)."""
        if MASK_PRESENT not in self.group:
            return np.zeros(self.n_rows, bool)
        return np.asarray(read_whole(self.group[MASK_PRESENT]), bool)

    def mask_arrays(self) -> list[str]:
        """The mask arrays by path: one per variant, then the presence array."""
        names = [f"{MASKS}/{v}" for v in self.mask_variants()]
        return names + ([MASK_PRESENT] if MASK_PRESENT in self.group else [])

    # ---- writing whole shards --------------------------------------------------------------

    def _marker(self, array: str, shard: int) -> Path:
        return self.root / "progress" / array / f"{shard:05d}.done"

    def done_shards(self, array: str) -> set[int]:
        folder = self.root / "progress" / array
        if not folder.is_dir():
            return set()
        return {int(p.stem) for p in folder.glob("*.done")}

    def write_features(self, variant: str, shard: ShardRange, features: np.ndarray) -> None:
        """Write one whole shard of `features/<variant>` and mark it done."""
        meta = self.meta
        expected = (len(shard), meta.n_views, meta.feature_dim)
        if features.shape != expected:
            raise ValueError(f"shard {shard.index} has shape {features.shape}, not {expected}")
        data = features.astype(np.float16)
        self.group[f"features/{variant}"][shard.start : shard.stop] = data
        _atomic_write(self._marker(f"features/{variant}", shard.index), checksum(data))

    def write_text(self, shard: ShardRange, embeddings: np.ndarray, mask: np.ndarray) -> None:
        text, mask = embeddings.astype(np.float16), mask.astype(bool)
        self.group["text"][shard.start : shard.stop] = text
        self.group["text_mask"][shard.start : shard.stop] = mask
        _atomic_write(self._marker("text", shard.index), checksum(text, mask))

    def write_samples(self, shard: ShardRange, rows: list[dict[str, Any]]) -> None:
        if len(rows) != len(shard):
            raise ValueError(f"shard {shard.index} has {len(rows)} sample rows, not {len(shard)}")
        path = self.root / "parts" / f"samples-{shard.index:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA), tmp)
        os.replace(tmp, path)
        _atomic_write(self._marker("samples", shard.index), "")

    def finalize(self) -> bool:
        """Merge the per-shard sample rows once every shard is done; record completion."""
        shards = {s.index for s in self.shards()}
        arrays = ["samples", "text", *(f"features/{v}" for v in self.variants())]
        arrays += self.mask_arrays()
        progress = {a: len(self.done_shards(a) & shards) for a in arrays}
        complete = all(n == len(shards) for n in progress.values())
        if self.done_shards("samples") >= shards:
            parts = [
                pq.read_table(self.root / "parts" / f"samples-{i:05d}.parquet")
                for i in sorted(shards)
            ]
            table = pa.concat_tables(parts)
            tmp = self.root / f".{SAMPLES_FILE}.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, self.root / SAMPLES_FILE)
        self.update_attrs(complete=complete, shards_done=progress, n_shards=len(shards))
        return complete

    # ---- reading ---------------------------------------------------------------------------

    def samples(self) -> pa.Table:
        path = self.root / SAMPLES_FILE
        if not path.is_file():
            raise UserError(f"cache {self.root} has no {SAMPLES_FILE}: extraction did not finish")
        return pq.read_table(path)

    def features(self, variant: str = "clean") -> np.ndarray:
        """A whole variant in memory, float16 [N, V, D]: the normal training path."""
        if variant not in self.variants():
            have = ", ".join(self.variants()) or "none"
            raise UserError(f"cache {self.root} has no variant {variant!r} (it has: {have})")
        return read_whole(self.group[f"features/{variant}"])

    def text(self) -> tuple[np.ndarray, np.ndarray]:
        return read_whole(self.group["text"]), read_whole(self.group["text_mask"])

    def arrays(self) -> dict[str, zarr.Array]:
        out = {f"features/{v}": self.group[f"features/{v}"] for v in self.variants()}
        out["text"] = self.group["text"]
        out["text_mask"] = self.group["text_mask"]
        out.update({name: self.group[name] for name in self.mask_arrays()})
        return out

    def info(self) -> dict[str, Any]:
        """Everything `roadwork cache info` shows, as one JSON-ready dict."""
        attrs = self.meta
        out: dict[str, Any] = {
            "path": str(self.root),
            "format_version": attrs.format_version,
            "complete": attrs.complete,
            "rows": attrs.n_rows,
            "arrays": {
                name: {
                    "shape": list(arr.shape),
                    "dtype": str(arr.dtype),
                    "chunks": list(arr.chunks),
                    "shards": list(arr.shards) if arr.shards else None,
                }
                for name, arr in self.arrays().items()
            },
            "shards_done": attrs.shards_done,
            "n_shards": len(self.shards()),
            "backbone": attrs.backbone,
            "views": attrs.views,
            "variants": attrs.variants,
            "text_model": attrs.text_model,
            "masks": attrs.masks,
            "source": attrs.source,
            "tool_version": attrs.tool_version,
            "created": attrs.created,
        }
        if (self.root / SAMPLES_FILE).is_file():
            table = self.samples()

            def counts(column: str) -> dict[str, int]:
                values = table.column(column).to_pylist()
                return {str(k): v for k, v in sorted(Counter(values).items(), key=str)}

            out["splits"] = counts("split")
            out["labels"] = counts("label")
            out["statuses"] = counts("status")
            out["text_rows"] = int(np.asarray(self.group["text_mask"][:]).sum())
            if self.mask_arrays():
                out["mask_rows"] = int(self.mask_present().sum())
        return out


def to_json(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=2, sort_keys=False, default=str)

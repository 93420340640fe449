"""The cache's attributes (the Zarr group's `zarr.json`): the only writer and reader of them.

They say what the features are (backbone, view layout, variant recipes), how the arrays are
cut (rows, shards, chunks), and how far extraction got (per-array shard counts, complete).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from roadwork_cache.runtime.errors import UserError

FORMAT_NAME = "roadwork-cache"
FORMAT_VERSION = 1


@dataclass
class CacheAttrs:
    n_rows: int
    n_views: int
    feature_dim: int
    shard_rows: int
    chunk_rows: int
    backbone: dict[str, Any] = field(default_factory=dict)  # preset, weights, pool, view size...
    views: dict[str, Any] = field(default_factory=dict)  # layout, n_views, names, view_size
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> recipe
    masks: dict[str, Any] | None = None  # mask source, prompts, grid, segmenter
    text_model: str | None = None
    source: str | None = None
    tool_version: str | None = None
    created: str | None = None
    complete: bool = False
    shards_done: dict[str, int] = field(default_factory=dict)  # array -> shards done
    n_shards: int | None = None
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    @property
    def random_init(self) -> bool:
        """Features of a randomly initialised backbone (the tiny preset)."""
        return bool(self.backbone.get("random_init"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Any) -> CacheAttrs:
        """The attributes of the cache at `root`; one sentence when they are not ours."""
        if data.get("format") != FORMAT_NAME:
            raise UserError(f"{root} is a Zarr group but not a roadwork cache")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise UserError(
                f"cache {root} has format version {version}, this tool reads version "
                f"{FORMAT_VERSION}; re-run `roadwork extract` to rebuild it"
            )
        unknown = sorted(set(data) - cls.keys())
        if unknown:
            raise UserError(f"cache {root} has unknown attribute(s) {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise UserError(f"cache {root} has incomplete attributes: {exc}") from None

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
    masks: dict[str, Any] | None = None  # mask source, prompts, grid, segmenter: MASK_KEYS
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


# What `masks` records: the source ('sam3' or 'column:NAME'), the grid side G, the stored
# dtype, the prompts (SAM 3), the class ids counted as roadwork (supplied indexed masks),
# and the segmenter (path, weights sha256, thresholds, input size).
MASK_KEYS = ("source", "grid", "dtype", "prompts", "classes", "segmenter")
# Keys that must agree for masks of one cache to be comparable (the path may move).
MASK_IDENTITY = ("source", "grid", "dtype", "prompts", "classes")


def check_mask_attrs(root: Any, have: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """A cache's masks all come from one source and one setting: one sentence otherwise."""
    unknown = sorted(set(new) - set(MASK_KEYS))
    if unknown:
        raise ValueError(f"not mask attributes: {', '.join(unknown)}")
    if not have:
        return
    for key in MASK_IDENTITY:
        if have.get(key) != new.get(key):
            raise UserError(
                f"cache {root} holds masks with {key} = {have.get(key)!r}, not "
                f"{new.get(key)!r}; use the same mask settings or a new --cache folder"
            )
    # The segmenter may move (its path), but not change weights or thresholds.
    old_seg, new_seg = have.get("segmenter") or {}, new.get("segmenter") or {}
    for key in sorted((set(old_seg) | set(new_seg)) - {"path"}):
        if old_seg.get(key) != new_seg.get(key):
            raise UserError(
                f"cache {root} holds masks from a segmenter with {key} = "
                f"{str(old_seg.get(key))[:16]}, not {str(new_seg.get(key))[:16]}; use the "
                "same --segmenter settings or a new --cache folder"
            )

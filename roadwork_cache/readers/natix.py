"""Reader of NATIX roadwork parquet shards, streamed one row group at a time.

The real dataset is about 10 GB of JPEG bytes; only one row group is ever in memory, and a
row range (a cache shard) is read by skipping whole row groups from the footer metadata.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from roadwork_cache.readers import metadata as md
from roadwork_cache.readers.masks import read_mask_ref
from roadwork_cache.readers.schema import NATIX_COLUMNS, REQUIRED_COLUMNS, Sample
from roadwork_cache.runtime.errors import UserError

SPLIT_NAMES = md.SPLIT_SYNONYMS


def split_from_path(path: Path) -> str | None:
    """'train-00000-of-00010.parquet' -> 'train'; else a parent folder named like a split."""
    stem = path.name.split("-")[0].split("_")[0].split(".")[0].lower()
    if stem in SPLIT_NAMES:
        return SPLIT_NAMES[stem]
    for parent in path.parents:
        if parent.name.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[parent.name.lower()]
    return None


def sample_from_record(record: dict[str, Any], source: str, split: str | None) -> Sample:
    """One NATIX row (column name -> python value) to a Sample; never raises."""
    missing = [c for c in REQUIRED_COLUMNS if c not in record]
    row_id = md.parse_id(record.get("id")) or source
    image = record.get("image")
    if isinstance(image, dict):
        image_bytes = image.get("bytes")
    elif isinstance(image, bytes | bytearray):
        image_bytes = bytes(image)
    else:
        image_bytes = None
    gps = md.parse_gps(record.get("gps"))
    sample = Sample(
        id=row_id,
        image_bytes=image_bytes,
        source=source,
        split=md.normalise_split(record.get("split")) or split,
        label=md.parse_label(record.get("label")),
        vid_id=md.parse_id(record.get("video_info.vid_id")),
        gps_lat=gps[0] if gps else None,
        gps_lon=gps[1] if gps else None,
        city=md.parse_text(record.get("city_name")) or None,
        weather=md.parse_tags(record.get("scene_level_tags.weather")),
        daytime=md.parse_tag(record.get("scene_level_tags.daytime")),
        scene=md.parse_tag(record.get("scene_level_tags.scene_environment")),
        alteration=", ".join(md.parse_tags(record.get("scene_level_tags.travel_alteration")))
        or None,
        description=md.parse_text(record.get("scene_description")),
        width=md.parse_int(record.get("width")),
        height=md.parse_int(record.get("height")),
    )
    if missing:
        sample.error = f"row is missing column(s): {', '.join(missing)}"
    elif image_bytes is None:
        sample.error = "row has no image bytes"
    return sample


class NatixParquetReader:
    """A sorted list of NATIX parquet shards seen as one table of rows."""

    kind = "natix-parquet"

    def __init__(self, files: list[Path], mask_column: str | None = None):
        if not files:
            raise UserError("no parquet files to read")
        self.files = sorted(files)
        self.mask_column = mask_column  # a column of supplied roadwork masks, if any
        self._row_groups: list[tuple[Path, int, int, int]] = []  # (file, group, first row, n)
        first = 0
        for path in self.files:
            try:
                meta = pq.ParquetFile(path).metadata
            except Exception as exc:
                raise UserError(f"{path} is not a readable parquet file: {exc}") from None
            if mask_column is not None and mask_column not in meta.schema.to_arrow_schema().names:
                raise UserError(f"{path} has no mask column {mask_column!r}")
            for group in range(meta.num_row_groups):
                n = meta.row_group(group).num_rows
                self._row_groups.append((path, group, first, n))
                first += n
        self._rows = first

    def __len__(self) -> int:
        return self._rows

    def describe(self) -> str:
        return f"{len(self.files)} parquet file(s), {self._rows} rows"

    def iter_samples(self, start: int = 0, stop: int | None = None) -> Iterator[Sample]:
        """Yield the samples of rows [start, stop) in table order."""
        stop = self._rows if stop is None else min(stop, self._rows)
        for path, group, first, n in self._row_groups:
            if first + n <= start or first >= stop:
                continue  # skipped from the footer alone: no bytes read
            handle = pq.ParquetFile(path)
            wanted = {*NATIX_COLUMNS, "split", self.mask_column}
            columns = [c for c in handle.schema_arrow.names if c in wanted]
            table = handle.read_row_group(group, columns=columns)
            split = split_from_path(path)
            lo, hi = max(start - first, 0), min(stop - first, n)
            for offset, record in enumerate(table.slice(lo, hi - lo).to_pylist(), start=lo):
                sample = sample_from_record(record, f"{path.name}:{first + offset}", split)
                if self.mask_column is not None:
                    ref = record.get(self.mask_column)
                    sample.mask, sample.mask_error = read_mask_ref(ref, path.parent)
                yield sample

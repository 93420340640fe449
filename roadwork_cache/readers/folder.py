"""Reader of an image folder described by a CSV or JSONL manifest.

A manifest has one row per image: `filename` (relative to the folder) and `label`, and
optionally any NATIX metadata column (`gps`, `city_name`, `scene_description`,
`video_info.vid_id`, `scene_level_tags.weather`, ...) or its short name (`vid_id`, `city`,
`weather`, `daytime`, `scene`, `alteration`, `description`), plus `id` and `split`, and
`mask`: a supplied roadwork mask file (relative to the folder), used whenever present.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from roadwork_cache.readers.masks import read_mask_ref
from roadwork_cache.readers.natix import sample_from_record
from roadwork_cache.readers.schema import Sample
from roadwork_cache.runtime.errors import UserError

SHORT_NAMES = {
    "vid_id": "video_info.vid_id",
    "city": "city_name",
    "weather": "scene_level_tags.weather",
    "daytime": "scene_level_tags.daytime",
    "scene": "scene_level_tags.scene_environment",
    "alteration": "scene_level_tags.travel_alteration",
    "description": "scene_description",
}

MASK_COLUMN = "mask"


def read_image_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV or JSONL manifest as dicts; a malformed file is one clear UserError."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        elif suffix in {".jsonl", ".ndjson"}:
            rows = []
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except ValueError:
                            raise UserError(f"{path} line {number} is not valid JSON") from None
        else:
            raise UserError(f"manifest {path} must be .csv or .jsonl")
    except OSError as exc:
        raise UserError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    if rows and "filename" not in rows[0]:
        raise UserError(f"manifest {path} has no 'filename' column")
    return rows


class ImageFolderReader:
    """Images on disk listed by a manifest; bytes are read lazily, one image at a time."""

    kind = "image-folder"

    def __init__(self, manifest: Path, root: Path | None = None, mask_column: str | None = None):
        self.manifest = manifest
        self.root = root or manifest.parent
        self.rows = read_image_manifest(manifest)
        if not self.rows:
            raise UserError(f"manifest {manifest} lists no images")
        if mask_column is not None and mask_column not in self.rows[0]:
            raise UserError(f"manifest {manifest} has no mask column {mask_column!r}")
        # The manifest's `mask` column is used whenever present.
        self.mask_column = mask_column or (MASK_COLUMN if MASK_COLUMN in self.rows[0] else None)

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self) -> str:
        return f"{len(self.rows)} images listed in {self.manifest}"

    def iter_samples(self, start: int = 0, stop: int | None = None) -> Iterator[Sample]:
        for row in self.rows[start:stop]:
            record = {SHORT_NAMES.get(k, k): v for k, v in row.items()}
            name = str(record.get("filename") or "")
            path = self.root / name
            error = None
            data = None
            if not name:
                error = "manifest row has an empty filename"
            else:
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    error = f"file not found: {name}"
                except OSError as exc:
                    error = f"cannot read {name}: {exc.strerror or exc}"
            record["image"] = {"bytes": data, "path": name}
            record.setdefault("id", Path(name).stem or None)
            sample = sample_from_record(record, name or str(self.manifest), None)
            sample.error = error or sample.error
            if self.mask_column is not None:
                ref = row.get(self.mask_column)
                sample.mask, sample.mask_error = read_mask_ref(ref, self.root)
            yield sample

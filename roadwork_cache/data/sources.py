"""Resolve the user's source argument to a reader: parquet shards or an image folder."""

from __future__ import annotations

import glob
from pathlib import Path

from roadwork_cache.data.folder import ImageFolderReader
from roadwork_cache.data.natix import NatixParquetReader
from roadwork_cache.errors import UserError

MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
Reader = NatixParquetReader | ImageFolderReader


def open_source(spec: str, manifest: str | None = None) -> Reader:
    """Resolve a user's source argument: parquet glob/dir/file, or a folder with a manifest."""
    if manifest is not None:
        path = Path(manifest)
        if not path.is_file():
            raise UserError(f"manifest {manifest} does not exist")
        return ImageFolderReader(path, Path(spec) if Path(spec).is_dir() else None)
    path = Path(spec)
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"no files match {spec}")
        parquet = [p for p in files if p.suffix == ".parquet"]
        if not parquet:
            raise UserError(f"no parquet files match {spec}")
        return NatixParquetReader(parquet)
    if not path.exists():
        raise UserError(f"source {spec} does not exist")
    if path.is_file():
        if path.suffix == ".parquet":
            return NatixParquetReader([path])
        if path.suffix.lower() in {".csv", ".jsonl", ".ndjson"}:
            return ImageFolderReader(path)
        raise UserError(f"source {spec} is neither a parquet file nor a .csv/.jsonl manifest")
    parquet = sorted(path.rglob("*.parquet"))
    if parquet:
        return NatixParquetReader(parquet)
    for name in MANIFEST_NAMES:
        if (path / name).is_file():
            return ImageFolderReader(path / name, path)
    raise UserError(
        f"{spec} holds no parquet files and no manifest.csv / manifest.jsonl "
        "(pass --manifest to name one)"
    )

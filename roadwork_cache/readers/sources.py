"""Resolve the user's source argument to a reader: parquet shards or an image folder."""

from __future__ import annotations

import glob
from pathlib import Path

from roadwork_cache.readers.folder import ImageFolderReader
from roadwork_cache.readers.metadata import normalise_split
from roadwork_cache.readers.natix import NatixParquetReader, split_from_path
from roadwork_cache.runtime.errors import UserError

MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
Reader = NatixParquetReader | ImageFolderReader


def open_source(
    spec: str,
    manifest: str | None = None,
    splits: list[str] | None = None,
    mask_column: str | None = None,
) -> Reader:
    """Resolve a user's source argument: parquet glob/dir/file, or a folder with a manifest;
    `splits` keeps only the rows of those splits; `mask_column` names a column of supplied
    roadwork masks (a manifest's `mask` column is read without it)."""
    reader = _open(spec, manifest)
    if mask_column is not None:
        if isinstance(reader, NatixParquetReader):
            reader = NatixParquetReader(reader.files, mask_column)
        else:
            reader = ImageFolderReader(reader.manifest, reader.root, mask_column)
    return reader if not splits else select_splits(reader, splits)


def select_splits(reader: Reader, splits: list[str]) -> Reader:
    """Parquet shards are chosen by the split in their file name (train-00000-of-...), an
    image folder's rows by the manifest's `split` column."""
    wanted = {normalise_split(s) for s in splits} - {None}
    if isinstance(reader, NatixParquetReader):
        unknown = [f.name for f in reader.files if split_from_path(f) is None]
        if unknown:
            raise UserError(
                f"cannot tell the split of {unknown[0]} from its name; --splits "
                "needs shards named like train-00000-of-00010.parquet"
            )
        files = [f for f in reader.files if split_from_path(f) in wanted]
        if not files:
            raise UserError(f"no parquet shards of split(s) {', '.join(sorted(wanted))}")
        return NatixParquetReader(files, reader.mask_column)
    rows = [r for r in reader.rows if normalise_split(r.get("split")) in wanted]
    if not rows:
        raise UserError(
            f"manifest {reader.manifest} has no rows of split(s) "
            f"{', '.join(sorted(wanted))} (in its 'split' column)"
        )
    reader.rows = rows
    return reader


def _open(spec: str, manifest: str | None) -> Reader:
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

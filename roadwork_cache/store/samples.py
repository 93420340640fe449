"""`samples.parquet`, the cache's table of rows: one per image in cache order, what the
reader gave (id, split, label, video, GPS, tags, text) and what extract saw (size, status,
the one-line error). `store/cache.py` writes it per shard and merges it; this module says
what a row is."""

from __future__ import annotations

import pyarrow as pa

from roadwork_cache.readers.schema import Sample

SAMPLES_FILE = "samples.parquet"

SAMPLES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("label", pa.int8()),
        ("vid_id", pa.string()),
        ("gps_lat", pa.float64()),
        ("gps_lon", pa.float64()),
        ("city", pa.string()),
        ("weather", pa.list_(pa.string())),
        ("daytime", pa.string()),
        ("scene", pa.string()),
        ("alteration", pa.string()),
        ("description", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("source", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)


def sample_row(sample: Sample, width: int | None, height: int | None, error: str | None) -> dict:
    """One row of samples.parquet (SAMPLES_SCHEMA) for a sample as extract saw it."""
    return {
        "id": sample.id,
        "split": sample.split,
        "label": sample.label,
        "vid_id": sample.vid_id,
        "gps_lat": sample.gps_lat,
        "gps_lon": sample.gps_lon,
        "city": sample.city,
        "weather": sample.weather,
        "daytime": sample.daytime,
        "scene": sample.scene,
        "alteration": sample.alteration,
        "description": sample.description,
        "width": width if width is not None else sample.width,
        "height": height if height is not None else sample.height,
        "source": sample.source,
        "status": "error" if error else "ok",
        "error": error,
    }

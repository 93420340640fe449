"""Small builders shared by the tests: NATIX rows and a CLI runner that keeps exit codes."""

from __future__ import annotations

import io
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from roadwork_cache.data.schema import NATIX_COLUMNS


def jpeg(colour=(90, 90, 90), size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def natix_row(i: int, **over) -> dict:
    row = {c: None for c in NATIX_COLUMNS}
    row.update({
        "image": {"bytes": jpeg((20 * (i % 10), 90, 90)), "path": f"{i}.jpg"},
        "id": i,
        "width": 32,
        "height": 24,
        "gps": "[39.77, -86.18]",
        "city_name": "Indianapolis",
        "scene_description": "Cones on the right." if i % 2 else "",
        "video_info.vid_id": f"vid{i // 3}",
        "scene_level_tags.daytime": "Light",
        "scene_level_tags.scene_environment": "Urban",
        "scene_level_tags.travel_alteration": "['Lane shift']" if i % 2 else None,
        "scene_level_tags.weather": "['Sunny', 'Cloudy']",
        "label": i % 2,
    })
    row.update(over)
    return row


def write_shard(path, rows, row_group_size=4) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def run_cli(monkeypatch, *args: str) -> int:
    """Run `roadwork ARGS` in-process through the real entry point; return the exit code."""
    from roadwork_cache.cli import main

    monkeypatch.setattr(sys, "argv", ["roadwork", *map(str, args)])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0

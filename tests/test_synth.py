"""Tests of the synthetic NATIX-format generator (roadwork_cache.synth)."""

from __future__ import annotations

import ast
import io
import math
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from roadwork_cache.readers.schema import NATIX_COLUMNS
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.synth.dataset import CITIES, write_synthetic
from roadwork_cache.synth.layout import ALTERATIONS, DAYTIMES, ENVIRONMENTS, WEATHERS
from roadwork_cache.synth.scene import render_scene

SHARD_NAME = re.compile(r"^(train|test)-(\d{5})-of-(\d{5})\.parquet$")
GPS = re.compile(r"^\[(-?\d+(?:\.\d+)?), (-?\d+(?:\.\d+)?)\]$")


def _read(paths: list[Path]) -> dict[str, pa.Table]:
    """Tables per split, shards concatenated in name order."""
    by_split: dict[str, list[pa.Table]] = defaultdict(list)
    for p in sorted(paths):
        by_split[SHARD_NAME.match(p.name).group(1)].append(pq.read_table(p))
    return {s: pa.concat_tables(ts) for s, ts in by_split.items()}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], dict[str, pa.Table]]:
    out = tmp_path_factory.mktemp("synth400")
    paths = write_synthetic(out, 400, seed=7)
    return paths, _read(paths)


def _rows(tables: dict[str, pa.Table]) -> list[dict]:
    rows = []
    for split, t in tables.items():
        for r in t.to_pylist():
            r["_split"] = split
            rows.append(r)
    return rows


def test_columns_types_and_shard_names(big):
    paths, tables = big
    for p in paths:
        m = SHARD_NAME.match(p.name)
        assert m, p.name
        assert int(m.group(2)) < int(m.group(3))
        schema = pq.read_schema(p)
        assert tuple(schema.names) == NATIX_COLUMNS
        assert schema.field("image").type == pa.struct(
            [("bytes", pa.binary()), ("path", pa.string())]
        )
        for c in ("id", "width", "height", "label", "video_info.frame_id"):
            assert schema.field(c).type == pa.int64(), c
        for c in ("gps", "scene_description", "scene_level_tags.weather", "video_info.vid_id"):
            assert schema.field(c).type == pa.string(), c
        # Row groups small enough to stream.
        meta = pq.ParquetFile(p).metadata
        assert all(meta.row_group(i).num_rows <= 64 for i in range(meta.num_row_groups))
    assert set(tables) == {"train", "test"}
    assert sum(t.num_rows for t in tables.values()) == 400


def test_images_decode_to_stated_size(big):
    _, tables = big
    rows = _rows(tables)
    sizes = set()
    for r in rows[::7]:
        im = Image.open(io.BytesIO(r["image"]["bytes"]))
        assert im.format == "JPEG"
        assert im.size == (r["width"], r["height"])
        assert r["image"]["path"].endswith(".jpg")
        sizes.add(im.size)
    assert any(w < h for w, h in sizes)  # some portrait
    assert any(w > h for w, h in sizes)


def test_metadata_fields_follow_the_real_quirks(big):
    _, tables = big
    rows = _rows(tables)
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    alteration_rows = 0
    for r in rows:
        # Leakage fields exactly as in the real data: set only on roadwork rows.
        assert (r["scene_description"] != "") == (r["label"] == 1)
        assert r["scene_description"] is not None
        if r["scene_level_tags.travel_alteration"] is not None:
            assert r["label"] == 1
            alteration_rows += 1
            assert set(ast.literal_eval(r["scene_level_tags.travel_alteration"])) <= set(
                ALTERATIONS
            )
        assert r["scene_level_tags.daytime"] in (*DAYTIMES, None)
        assert r["scene_level_tags.scene_environment"] in (*ENVIRONMENTS, None)
        if r["scene_level_tags.weather"] is not None:
            w = ast.literal_eval(r["scene_level_tags.weather"])
            assert w and set(w) <= set(WEATHERS)
        datetime.strptime(r["date_captured"], "%Y-%m-%d %H:%M:%S")
        assert r["city_name"] in {c[0] for c in CITIES}
        assert isinstance(r["video_info.frame_id"], int)
    positives = sum(r["label"] for r in rows)
    assert 0 < alteration_rows < positives  # on some roadwork rows, not all
    for tag in ("daytime", "scene_environment", "weather"):
        nulls = sum(r[f"scene_level_tags.{tag}"] is None for r in rows) / len(rows)
        assert 0.02 < nulls < 0.5, tag


def test_gps_mostly_parses_near_its_city(big):
    _, tables = big
    rows = _rows(tables)
    centres = {c[0]: (c[1], c[2]) for c in CITIES}
    ok = 0
    for r in rows:
        m = GPS.match(r["gps"] or "")
        if not m:
            continue
        ok += 1
        lat, lon = float(m.group(1)), float(m.group(2))
        clat, clon = centres[r["city_name"]]
        assert abs(lat - clat) < 0.5 and abs(lon - clon) < 0.5
    assert ok / len(rows) > 0.85
    assert ok < len(rows)  # some NULL or malformed strings for the parser to survive


def test_videos_are_whole_and_consistent(big):
    _, tables = big
    videos: dict[str, list[dict]] = defaultdict(list)
    for r in _rows(tables):
        videos[r["video_info.vid_id"]].append(r)
    for frames in videos.values():
        assert len({f["_split"] for f in frames}) == 1
        assert len({f["label"] for f in frames}) == 1
        assert len({f["city_name"] for f in frames}) == 1
        assert len({(f["width"], f["height"]) for f in frames}) == 1
        assert len({f["video_info.seq_id"] for f in frames}) == 1
        fids = [f["video_info.frame_id"] for f in frames]
        assert fids == sorted(fids) and len(set(fids)) == len(fids)
    lengths = [len(f) for f in videos.values()]
    assert max(lengths) <= 8
    assert sum(n >= 2 for n in lengths) >= 0.9 * len(lengths)


def test_label_and_split_rates(big):
    _, tables = big
    train = np.array(tables["train"].column("label").to_pylist())
    test = np.array(tables["test"].column("label").to_pylist())
    assert 0.7 <= train.mean() <= 0.9
    assert 0.8 <= test.mean() <= 1.0
    assert 0.15 <= len(test) / (len(train) + len(test)) <= 0.35


def _orange_fraction(im: Image.Image) -> float:
    a = np.asarray(im.convert("RGB")).astype(np.int16)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return float(((r > 150) & (r - g > 60) & (g - b > 20) & (b < 100)).mean())


def test_roadwork_images_carry_more_orange(big):
    _, tables = big
    frac = {0: [], 1: []}
    for r in _rows(tables)[::2]:
        im = Image.open(io.BytesIO(r["image"]["bytes"]))
        im.draft("RGB", (im.width // 2, im.height // 2))  # half-size decode: faster, same cue
        frac[r["label"]].append(_orange_fraction(im))
    assert np.mean(frac[1]) > 3 * np.mean(frac[0])
    # Colour is a cue, not a perfect one: some roadwork frames show almost no orange.
    assert min(frac[1]) < 0.001


def test_render_scene_size_and_cue():
    rng = np.random.default_rng(0)
    pos = [render_scene(rng, 320, 180, True) for _ in range(12)]
    neg = [render_scene(rng, 180, 320, False) for _ in range(12)]
    assert all(im.size == (320, 180) and im.mode == "RGB" for im in pos)
    assert all(im.size == (180, 320) for im in neg)
    assert np.mean([_orange_fraction(i) for i in pos]) > np.mean([_orange_fraction(i) for i in neg])
    # Same generator state, same picture.
    a = render_scene(np.random.default_rng(5), 160, 90, True)
    b = render_scene(np.random.default_rng(5), 160, 90, True)
    assert a.tobytes() == b.tobytes()


def test_deterministic_per_seed(tmp_path):
    a = _read(write_synthetic(tmp_path / "a", 60, seed=3))
    b = _read(write_synthetic(tmp_path / "b", 60, seed=3))
    c = _read(write_synthetic(tmp_path / "c", 60, seed=4))
    assert a.keys() == b.keys()
    for split in a:
        assert a[split].equals(b[split])
    assert any(split not in c or not a[split].equals(c[split]) for split in a)


def test_shard_rows_progress_and_sizes(tmp_path):
    seen: list[int] = []
    paths = write_synthetic(
        tmp_path, 60, seed=1, shard_rows=16, sizes=[(96, 64)], progress=seen.append
    )
    assert sum(seen) == 60
    tables = _read(paths)
    assert sum(t.num_rows for t in tables.values()) == 60
    for split in ("train", "test"):
        shards = sorted(p for p in paths if p.name.startswith(split))
        counts = [pq.ParquetFile(p).metadata.num_rows for p in shards]
        assert all(0 < n <= 16 for n in counts)
        assert all(p.name.endswith(f"-of-{len(shards):05d}.parquet") for p in shards)
    assert set(tables["train"].column("width").to_pylist()) == {96}
    assert set(tables["test"].column("height").to_pylist()) == {64}
    # A rewrite with fewer shards leaves no stale shard behind.
    again = write_synthetic(tmp_path, 20, seed=1, shard_rows=64, test_fraction=0.0)
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == sorted(p.name for p in again)
    assert [p.name for p in again] == ["train-00000-of-00001.parquet"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rows": 0},
        {"rows": -5},
        {"test_fraction": 1.5},
        {"test_fraction": -0.1},
        {"test_fraction": math.nan},
        {"shard_rows": 0},
        {"sizes": [(10, 10)]},
    ],
)
def test_bad_arguments_raise_user_error(tmp_path, kwargs):
    args = {"rows": 10, **kwargs}
    with pytest.raises(UserError) as err:
        write_synthetic(tmp_path, **args)
    msg = str(err.value)
    assert msg.endswith(".") and "\n" not in msg
    assert not list(tmp_path.glob("*.parquet"))


def test_real_looking_shards_are_never_overwritten(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    real = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"id": [1]}), real)
    with pytest.raises(UserError, match="did not write"):
        write_synthetic(tmp_path, 10, 0)
    assert pq.read_table(real).num_rows == 1

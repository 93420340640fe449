"""Readers: NATIX parquet streamed by row group, image folder with a manifest, sources."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import jpeg, natix_row, write_shard
from roadwork_cache.readers.natix import NatixParquetReader, split_from_path
from roadwork_cache.readers.sources import open_source
from roadwork_cache.runtime.errors import UserError


@pytest.fixture
def shards(tmp_path):
    write_shard(tmp_path / "train-00000-of-00002.parquet", [natix_row(i) for i in range(10)])
    write_shard(tmp_path / "train-00001-of-00002.parquet", [natix_row(i) for i in range(10, 17)])
    write_shard(tmp_path / "test-00000-of-00001.parquet", [natix_row(i) for i in range(17, 20)])
    return tmp_path


def test_rows_span_files_in_sorted_order(shards):
    reader = open_source(str(shards / "*.parquet"))
    assert isinstance(reader, NatixParquetReader) and len(reader) == 20
    ids = [s.id for s in reader.iter_samples()]
    assert ids == [str(i) for i in [17, 18, 19, *range(17)]]  # test-* sorts before train-*


def test_sample_fields_are_parsed(shards):
    reader = open_source(str(shards))
    s = next(reader.iter_samples(4, 5))
    assert s.id == "1" and s.split == "train" and s.label == 1 and s.vid_id == "vid0"
    assert (s.gps_lat, s.gps_lon) == (39.77, -86.18)
    assert s.weather == ["Sunny", "Cloudy"] and s.daytime == "Light" and s.scene == "Urban"
    assert s.alteration == "Lane shift" and s.description == "Cones on the right."
    assert s.error is None and s.image_bytes[:2] == b"\xff\xd8"


def test_row_range_reads_only_the_row_groups_it_needs(shards, monkeypatch):
    reader = open_source(str(shards / "*.parquet"))
    calls = []
    original = pq.ParquetFile.read_row_group

    def counting(self, i, *a, **kw):
        calls.append(i)
        return original(self, i, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    # rows 8..11 are train-00000 rows 5..8, which live in row groups 1 and 2 (4 rows each)
    got = [s.id for s in reader.iter_samples(8, 12)]
    assert got == ["5", "6", "7", "8"]
    assert calls == [1, 2]


def test_missing_columns_and_bytes_become_error_rows(tmp_path):
    rows = [natix_row(0), natix_row(1, image={"bytes": None, "path": "x.jpg"})]
    table = pa.Table.from_pylist(rows).drop_columns(["label"])
    pq.write_table(table, tmp_path / "a.parquet")
    table2 = pa.Table.from_pylist([natix_row(2, image={"bytes": None, "path": "x"})])
    pq.write_table(table2, tmp_path / "b.parquet")
    samples = list(open_source(str(tmp_path)).iter_samples())
    assert "missing column(s): label" in samples[0].error
    assert samples[2].error == "row has no image bytes"


def test_split_from_path(tmp_path):
    assert split_from_path(tmp_path / "train-00000-of-00010.parquet") == "train"
    assert split_from_path(tmp_path / "test-00001-of-00002.parquet") == "test"
    assert split_from_path(tmp_path / "validation" / "part0.parquet") == "val"
    assert split_from_path(tmp_path / "shard.parquet") is None


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_image_folder_with_manifest(tmp_path, fmt):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "b.png").write_bytes(b"garbage")
    rows = [
        {"filename": "a.jpg", "label": 1, "gps": "[42.36, -71.06]", "weather": "['Rainy']"},
        {"filename": "b.png", "label": 0, "gps": "", "weather": ""},
        {"filename": "missing.jpg", "label": 0, "gps": "", "weather": ""},
    ]
    if fmt == "csv":
        lines = ["filename,label,gps,weather"] + [
            f'{r["filename"]},{r["label"]},"{r["gps"]}","{r["weather"]}"' for r in rows
        ]
        (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    else:
        (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    reader = open_source(str(tmp_path))
    samples = list(reader.iter_samples())
    assert len(reader) == 3 and [s.id for s in samples] == ["a", "b", "missing"]
    assert samples[0].label == 1 and samples[0].gps_lat == 42.36 and samples[0].weather == ["Rainy"]
    assert samples[0].error is None and samples[1].error is None  # garbage is found on decode
    assert samples[2].error == "file not found: missing.jpg"
    assert samples[1].gps_lat is None


def test_manifest_without_filename_column(tmp_path):
    (tmp_path / "manifest.csv").write_text("name,label\na.jpg,1\n")
    with pytest.raises(UserError, match="no 'filename' column"):
        open_source(str(tmp_path))


@pytest.mark.parametrize(
    ("spec", "message"),
    [("nowhere/at/all", "does not exist"), ("nowhere/*.parquet", "no files match")],
)
def test_bad_sources_are_one_sentence(spec, message):
    with pytest.raises(UserError, match=message):
        open_source(spec)


def test_folder_without_data(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="no parquet files and no manifest"):
        open_source(str(tmp_path))
    with pytest.raises(UserError, match="no parquet files match"):
        open_source(str(tmp_path / "*.txt"))


def test_splits_select_shards_by_name(shards):
    reader = open_source(str(shards / "*.parquet"), splits=["test"])
    assert len(reader) == 3 and {s.split for s in reader.iter_samples()} == {"test"}
    assert len(open_source(str(shards), splits=["train", "test"])) == 20
    with pytest.raises(UserError, match="no parquet shards of split"):
        open_source(str(shards), splits=["validation"])


def test_splits_select_manifest_rows(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "manifest.csv").write_text("filename,label,split\na.jpg,1,train\na.jpg,0,test\n")
    reader = open_source(str(tmp_path), splits=["test"])
    assert [s.label for s in reader.iter_samples()] == [0]

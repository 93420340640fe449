"""`roadwork extract` end to end on small parquet shards with the tiny backbone."""

import json
import shutil

import numpy as np
import pytest

from helpers import natix_row, run_cli, write_shard
from roadwork_cache.store.cache import Cache

ARGS = ("--view-size", "32", "--shard-rows", "4", "--workers", "0", "--no-progress")


@pytest.fixture
def source(tmp_path):
    rows = [natix_row(i) for i in range(9)]
    rows[2]["image"] = {"bytes": b"\x89PNG\r\n\x1a\n broken", "path": "2.png"}
    rows[5]["image"] = {"bytes": b"", "path": "5.jpg"}
    write_shard(tmp_path / "train-00000-of-00001.parquet", rows[:7])
    write_shard(tmp_path / "test-00000-of-00001.parquet", rows[7:])
    return tmp_path


def extract(monkeypatch, source, cache, *extra):
    return run_cli(monkeypatch, "extract", f"{source}/*.parquet", "--cache", cache, *ARGS, *extra)


def test_extract_then_info_matches_the_data(monkeypatch, capsys, source, tmp_path):
    cache = tmp_path / "cache"
    assert extract(monkeypatch, source, cache) == 0
    capsys.readouterr()
    assert run_cli(monkeypatch, "cache", "info", cache, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 9 and info["complete"] is True
    assert info["splits"] == {"test": 2, "train": 7}
    assert info["labels"] == {"0": 5, "1": 4}
    assert info["statuses"] == {"error": 2, "ok": 7}
    assert info["text_rows"] == 4  # descriptions only on roadwork rows
    assert info["arrays"]["features/clean"] == {
        "shape": [9, 12, 64],
        "dtype": "float16",
        "chunks": [4, 12, 64],
        "shards": [4, 12, 64],
    }
    assert info["backbone"]["preset"] == "tiny" and info["backbone"]["random_init"] is True
    assert info["views"]["layout"] == "grid3x3-v1" and info["views"]["view_size"] == 32
    assert info["variants"]["clean"]["version"] == 1

    store = Cache.open(cache)
    samples = store.samples().to_pylist()
    errors = {r["id"]: r["error"] for r in samples if r["status"] == "error"}
    assert set(errors) == {"2", "5"}
    assert "corrupt" in errors["2"] or "not an image" in errors["2"]
    assert errors["5"].startswith("empty image")
    feats = store.features("clean").astype(np.float32)
    ok = [i for i, r in enumerate(samples) if r["status"] == "ok"]
    assert np.isfinite(feats).all() and np.abs(feats[ok]).sum(axis=(1, 2)).min() > 0
    assert np.all(feats[[i for i, r in enumerate(samples) if r["status"] == "error"]] == 0)
    # different images give different features, and the 12 views differ from each other
    assert not np.allclose(feats[ok[0]], feats[ok[1]])
    assert samples[0]["width"] == 32 and samples[0]["gps_lat"] == 39.77


def test_worker_processes_give_the_same_features(monkeypatch, source, tmp_path):
    assert extract(monkeypatch, source, tmp_path / "a") == 0
    assert extract(monkeypatch, source, tmp_path / "b", "--workers", "1") == 0
    np.testing.assert_array_equal(
        Cache.open(tmp_path / "a").features(), Cache.open(tmp_path / "b").features()
    )


def test_compiled_backbone_gives_the_eager_features(monkeypatch, source, tmp_path):
    """--compile runs the backbone's forward_features under torch.compile: traced by dynamo
    here with the eager backend (inductor's codegen would take minutes on this CPU; its
    numerics are bench/extract.py --compile's figure), so the features must match exactly."""
    import torch

    compiled = []
    real = torch.compile

    def traced(fn, **kwargs):
        compiled.append(getattr(fn, "__name__", fn))
        return real(fn, backend="eager")

    assert extract(monkeypatch, source, tmp_path / "eager") == 0
    monkeypatch.setattr(torch, "compile", traced)
    assert extract(monkeypatch, source, tmp_path / "compiled", "--compile") == 0
    assert compiled == ["forward_features"]
    np.testing.assert_array_equal(
        Cache.open(tmp_path / "compiled").features(), Cache.open(tmp_path / "eager").features()
    )


def test_rerun_resumes_only_missing_shards(monkeypatch, source, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert extract(monkeypatch, source, cache) == 0
    before = Cache.open(cache).features()
    for array in ("features/clean", "text", "samples"):
        (cache / "progress" / array / "00001.done").unlink()
    capsys.readouterr()
    assert extract(monkeypatch, source, cache) == 0
    assert "1 / 3" in capsys.readouterr().out  # the summary table is a result: stdout
    np.testing.assert_array_equal(Cache.open(cache).features(), before)


def test_limit_and_no_text(monkeypatch, source, tmp_path):
    cache = tmp_path / "cache"
    assert extract(monkeypatch, source, cache, "--limit", "5", "--no-text") == 0
    info = Cache.open(cache).info()
    assert info["rows"] == 5 and info["text_rows"] == 0


def test_image_folder_source(monkeypatch, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 30), (250, 120, 0)).save(folder / "a.png")
    Image.new("L", (30, 40), 100).save(folder / "b.jpg")
    (folder / "manifest.jsonl").write_text(
        '{"filename": "a.png", "label": 1}\n{"filename": "b.jpg", "label": 0}\n'
        '{"filename": "gone.jpg", "label": 0}\n'
    )
    assert run_cli(monkeypatch, "extract", folder, "--cache", tmp_path / "c", *ARGS) == 0
    rows = Cache.open(tmp_path / "c").samples().to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]
    assert (rows[1]["width"], rows[1]["height"]) == (30, 40)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("extract", "nowhere/*.parquet"), "no files match"),
        (("extract", "no/such/dir"), "does not exist"),
        (("extract", "{src}/*.parquet", "--backbone", "vit_giant"), "unknown backbone preset"),
        (("extract", "{src}/*.parquet", "--backbone", "vith16plus"), "needs --weights"),
        (("extract", "{src}/*.parquet", "--pool", "max"), "unknown pooling"),
        (("cache", "info", "{src}"), "not a roadwork cache"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(monkeypatch, capsys, source, tmp_path, args, message):
    args = [a.format(src=source) for a in args]
    code = (
        run_cli(monkeypatch, *args, "--cache", tmp_path / "c")
        if args[0] == "extract"
        else run_cli(monkeypatch, *args)
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    last = err.splitlines()[-1]
    assert message in last and last.startswith("error: ") and "Traceback" not in err


def test_a_resumed_cache_must_match_the_backbone(monkeypatch, capsys, source, tmp_path):
    cache = tmp_path / "cache"
    assert extract(monkeypatch, source, cache) == 0
    assert extract(monkeypatch, source, cache, "--pool", "cls+mean") == 2
    assert "use a new --cache folder" in capsys.readouterr().err
    shutil.rmtree(cache)

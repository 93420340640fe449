"""The cache: create, write whole shards, finalise, read back; format checks."""

import json

import numpy as np
import pytest

from roadwork_cache.errors import UserError
from roadwork_cache.store import Cache, shard_ranges


def make_cache(root, n=37, shard_rows=16, chunk_rows=4, dim=8):
    cache = Cache.create(root, n_rows=n, n_views=12, feature_dim=dim,
                         attrs={"backbone": {"preset": "tiny"}},
                         shard_rows=shard_rows, chunk_rows=chunk_rows)
    cache.ensure_variant("clean")
    return cache


def rows_for(shard):
    return [{"id": str(i), "split": "train", "label": i % 2, "weather": ["Sunny"],
             "status": "ok"} for i in range(shard.start, shard.stop)]


def test_shard_ranges_cover_all_rows():
    ranges = shard_ranges(37, 16)
    assert [(r.start, r.stop) for r in ranges] == [(0, 16), (16, 32), (32, 37)]


def test_round_trip(tmp_path):
    cache = make_cache(tmp_path / "c")
    rng = np.random.default_rng(0)
    full = rng.normal(size=(37, 12, 8)).astype(np.float32)
    text = rng.normal(size=(37, 384)).astype(np.float32)
    mask = rng.random(37) > 0.5
    for shard in cache.shards():
        cache.write_features("clean", shard, full[shard.start:shard.stop])
        cache.write_text(shard, text[shard.start:shard.stop], mask[shard.start:shard.stop])
        cache.write_samples(shard, rows_for(shard))
    assert cache.finalize() is True

    again = Cache.open(tmp_path / "c")
    feats = again.features("clean")
    assert feats.dtype == np.float16 and feats.shape == (37, 12, 8)
    np.testing.assert_array_equal(feats, full.astype(np.float16))
    t, m = again.text()
    np.testing.assert_array_equal(t, text.astype(np.float16))
    np.testing.assert_array_equal(m, mask)
    samples = again.samples()
    assert samples.column("id").to_pylist() == [str(i) for i in range(37)]
    info = again.info()
    assert info["rows"] == 37 and info["complete"] is True
    assert info["labels"] == {"0": 19, "1": 18} and info["statuses"] == {"ok": 37}
    assert info["arrays"]["features/clean"]["shards"] == [16, 12, 8]
    json.dumps(info)  # JSON-ready


def test_unfinished_cache_is_not_complete(tmp_path):
    cache = make_cache(tmp_path / "c")
    shard = cache.shards()[0]
    cache.write_features("clean", shard, np.zeros((16, 12, 8)))
    cache.write_samples(shard, rows_for(shard))
    assert cache.finalize() is False
    assert cache.done_shards("features/clean") == {0}
    with pytest.raises(UserError, match="extraction did not finish"):
        cache.samples()


def test_variant_axis(tmp_path):
    cache = make_cache(tmp_path / "c", n=5)
    cache.ensure_variant("aug-0")
    assert cache.variants() == ["aug-0", "clean"]
    with pytest.raises(UserError, match="no variant 'tta-0'"):
        cache.features("tta-0")


def test_shard_shape_is_checked(tmp_path):
    cache = make_cache(tmp_path / "c")
    with pytest.raises(ValueError):
        cache.write_features("clean", cache.shards()[0], np.zeros((15, 12, 8)))


def test_format_version_mismatch_is_one_sentence(tmp_path):
    cache = make_cache(tmp_path / "c", n=5)
    cache.update_attrs(format_version=99)
    with pytest.raises(UserError, match="format version 99, this tool reads version 1"):
        Cache.open(tmp_path / "c")


def test_not_a_cache(tmp_path):
    with pytest.raises(UserError, match="not a roadwork cache"):
        Cache.open(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("x")
    with pytest.raises(UserError, match="not an empty cache folder"):
        make_cache(tmp_path / "x")

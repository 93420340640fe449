"""The cache: create, write whole shards, finalise, read back; format checks."""

import json

import numpy as np
import pytest
import zarr

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.store.cache import Cache, shard_ranges
from roadwork_cache.store.fastread import _plain_sharded, read_whole


def make_cache(root, n=37, shard_rows=16, chunk_rows=4, dim=8):
    cache = Cache.create(
        root,
        n_rows=n,
        n_views=12,
        feature_dim=dim,
        attrs={"backbone": {"preset": "tiny"}},
        shard_rows=shard_rows,
        chunk_rows=chunk_rows,
    )
    cache.ensure_variant("clean")
    return cache


def rows_for(shard):
    return [
        {"id": str(i), "split": "train", "label": i % 2, "weather": ["Sunny"], "status": "ok"}
        for i in range(shard.start, shard.stop)
    ]


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
        cache.write_features("clean", shard, full[shard.start : shard.stop])
        cache.write_text(shard, text[shard.start : shard.stop], mask[shard.start : shard.stop])
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


# ---- whole-array reads: shard files straight into memory ---------------------------------------


def filled_cache(root, written=(0, 1, 2)):
    """37 rows in shards of 16 (chunks of 4), features written for the shards in `written`."""
    cache = make_cache(root)
    rng = np.random.default_rng(1)
    for shard in cache.shards():
        if shard.index in written:
            feats = rng.normal(size=(len(shard), 12, 8)).astype(np.float32)
            cache.write_features("clean", shard, feats)
            cache.write_text(
                shard, rng.normal(size=(len(shard), 384)), rng.random(len(shard)) > 0.5
            )
    return cache


@pytest.mark.parametrize("written", [(0, 1, 2), (1,), (0, 2), ()])
def test_direct_read_equals_zarr_on_complete_and_partial_caches(tmp_path, written):
    cache = filled_cache(tmp_path / "c", written)
    for name, array in cache.arrays().items():
        assert _plain_sharded(array), name  # the fast path is the one under test
        got, want = read_whole(array), array[:]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(cache.features("clean"), cache.group["features/clean"][:])


def test_direct_read_fills_chunks_never_written(tmp_path):
    cache = make_cache(tmp_path / "c")
    array = cache.group["features/clean"]
    array[4:8] = 1.5  # one chunk of the first shard: the others stay empty in its index
    array[36:37] = -2.0  # the edge chunk of the last shard, cut by the end of the array
    np.testing.assert_array_equal(read_whole(array), array[:])
    assert read_whole(array)[5].min() == 1.5 and read_whole(array)[0].max() == 0


def test_other_layouts_go_through_zarr(tmp_path):
    group = zarr.open_group(tmp_path / "z", mode="w")
    data = np.arange(37 * 6, dtype=np.float16).reshape(37, 6)
    compressed = group.create_array(
        "a", shape=data.shape, dtype="float16", chunks=(4, 6), shards=(16, 6)
    )  # the default compressor
    compressed[:] = data
    unsharded = group.create_array(
        "b", shape=data.shape, dtype="float16", chunks=(4, 6), compressors=None
    )
    unsharded[:] = data
    for array in (compressed, unsharded):
        assert not _plain_sharded(array)
        np.testing.assert_array_equal(read_whole(array), data)


def shard_file(cache, index=0):
    return cache.root / "features" / "clean" / "c" / str(index) / "0" / "0"


def test_damaged_shard_index_or_cut_shard_is_one_sentence(tmp_path):
    cache = filled_cache(tmp_path / "c")
    path = shard_file(cache)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # inside the index
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="shard index is damaged"):
        cache.features("clean")
    path.write_bytes(bytes(raw[:100]))  # cut short: the index is gone with the tail
    with pytest.raises(UserError, match="cache verify"):
        cache.features("clean")
    path.write_bytes(bytes(raw[:10]))  # shorter than the index itself
    with pytest.raises(UserError, match="shard index is damaged"):
        cache.features("clean")

"""Stage one at scale: variants, determinism, resume after SIGKILL, the writer lock,
torchrun with two processes, and `cache verify`."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import run_cli
from roadwork_cache.store.cache import Cache
from roadwork_cache.store.lock import writer_lock
from roadwork_cache.synth.dataset import write_synthetic

COMMON = ("--view-size", "32", "--shard-rows", "4", "--workers", "0", "--no-progress", "--no-text")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    write_synthetic(folder, 20, seed=5, sizes=[(160, 96), (96, 160)])
    return folder


def extract(monkeypatch, source, cache, variants="clean", *extra):
    return run_cli(
        monkeypatch,
        "extract",
        f"{source}/*.parquet",
        "--cache",
        cache,
        "--variants",
        variants,
        *COMMON,
        *extra,
    )


def all_features(cache) -> dict:
    store = Cache.open(cache)
    return {v: store.features(v) for v in store.variants()}


def assert_same_cache(a, b):
    fa, fb = all_features(a), all_features(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        assert np.array_equal(fa[name], fb[name]), name
    assert Cache.open(a).samples().equals(Cache.open(b).samples())


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    """One uninterrupted single-process run with every kind of variant."""
    cache = tmp_path_factory.mktemp("ref") / "cache"
    mp = pytest.MonkeyPatch()
    try:
        assert extract(mp, source, cache, "clean,aug:1,natix:2,tta:1") == 0
    finally:
        mp.undo()
    return cache


def test_variants_are_stored_with_their_recipes(reference):
    store = Cache.open(reference)
    assert store.variants() == ["aug-0", "clean", "natix-0", "natix-1", "tta-0"]
    recipes = store.attrs["variants"]
    assert recipes["natix-1"]["level"] == 1 and recipes["aug-0"]["version"] == 1
    feats = all_features(reference)
    ok = [i for i, r in enumerate(store.samples().to_pylist()) if r["status"] == "ok"]
    for name in ("aug-0", "natix-0", "tta-0"):  # a variant is not the clean image
        assert not np.array_equal(feats[name][ok], feats["clean"][ok]), name


def test_two_runs_are_bit_identical(monkeypatch, source, reference, tmp_path):
    assert extract(monkeypatch, source, tmp_path / "again", "clean,aug:1,natix:2,tta:1") == 0
    assert_same_cache(reference, tmp_path / "again")


def test_adding_variants_computes_only_the_missing_ones(monkeypatch, source, reference, tmp_path):
    cache = tmp_path / "cache"
    assert extract(monkeypatch, source, cache, "clean,natix:2") == 0
    markers = sorted((cache / "progress" / "features" / "clean").glob("*.done"))
    before = {m: m.stat().st_mtime_ns for m in markers}
    time.sleep(0.01)
    assert extract(monkeypatch, source, cache, "clean,aug:1,natix:2,tta:1") == 0
    assert {m: m.stat().st_mtime_ns for m in markers} == before  # clean was not redone
    assert_same_cache(reference, cache)


def test_sigkill_then_resume_equals_an_uninterrupted_run(source, reference, tmp_path):
    cache = tmp_path / "cache"
    args = [
        sys.executable,
        "-m",
        "roadwork_cache.cli",
        "extract",
        f"{source}/*.parquet",
        "--cache",
        str(cache),
        "--variants",
        "clean,aug:1,natix:2,tta:1",
        *COMMON,
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = cache / "progress" / "features"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(markers.glob("*/*.done"))) >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(markers.glob("*/*.done")))
    assert 0 < done_at_kill < 25, "the kill must land in the middle of the run"
    assert not (cache / "samples.parquet").exists()
    # the lock died with the process: the resumed run is not refused
    assert subprocess.run(args, capture_output=True).returncode == 0
    assert_same_cache(reference, cache)


def test_a_crash_between_data_and_marker_is_redone(monkeypatch, source, reference, tmp_path):
    cache = tmp_path / "cache"
    original = Cache.write_samples

    class SimulatedCrash(Exception):
        pass

    def crash_on_second_shard(self, shard, rows):
        if shard.index == 1:
            raise SimulatedCrash("after the features were written, before the rows")
        return original(self, shard, rows)

    monkeypatch.setattr(Cache, "write_samples", crash_on_second_shard)
    with pytest.raises(SimulatedCrash):
        extract(monkeypatch, source, cache, "clean,aug:1,natix:2,tta:1")
    monkeypatch.setattr(Cache, "write_samples", original)
    assert 1 not in Cache.open(cache).done_shards("samples")
    assert extract(monkeypatch, source, cache, "clean,aug:1,natix:2,tta:1") == 0
    assert_same_cache(reference, cache)


def test_a_second_writer_is_refused_with_the_holder_named(monkeypatch, capsys, source, tmp_path):
    cache = tmp_path / "cache"
    with writer_lock(cache):
        assert extract(monkeypatch, source, cache) == 2
    err = capsys.readouterr().err
    assert "is being written by pid" in err and str(os.getpid()) in err
    assert extract(monkeypatch, source, cache) == 0  # released


def test_torchrun_two_processes_equal_one(source, reference, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun ships with torch"
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "roadwork_cache.cli",
            "extract",
            f"{source}/*.parquet",
            "--cache",
            str(cache),
            "--variants",
            "clean,aug:1,natix:2,tta:1",
            *COMMON,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_cache(reference, cache)
    assert Cache.open(cache).attrs["complete"] is True


def test_verify_names_a_damaged_shard_and_repair_recomputes_it(
    monkeypatch, capsys, source, reference, tmp_path
):
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    assert run_cli(monkeypatch, "cache", "verify", cache) == 0
    shard_file = cache / "features" / "clean" / "c" / "1" / "0" / "0"
    data = bytearray(shard_file.read_bytes())
    data[100:164] = os.urandom(64)
    shard_file.write_bytes(bytes(data))
    capsys.readouterr()
    assert run_cli(monkeypatch, "cache", "verify", cache) == 1
    out = capsys.readouterr().err
    assert "features/clean shard 1 (rows 4-7)" in out and "checksum" in out
    assert "features/clean shard 0" not in out
    assert run_cli(monkeypatch, "cache", "verify", cache, "--repair") == 1
    assert extract(monkeypatch, source, cache, "clean,aug:1,natix:2,tta:1") == 0
    assert run_cli(monkeypatch, "cache", "verify", cache) == 0
    assert_same_cache(reference, cache)


def test_verify_names_a_missing_shard(monkeypatch, capsys, reference, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    (cache / "progress" / "features" / "natix-1" / "00002.done").unlink()
    assert run_cli(monkeypatch, "cache", "verify", cache) == 1
    assert "features/natix-1 shard 2 (rows 8-11) was never completed" in capsys.readouterr().err

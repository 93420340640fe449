"""Processes and locks: a killed `extract` or `predict` leaves no worker behind and no lock
held, a rank whose peer died stops in one sentence and the cache resumes, and of two
writers starting a new cache together one is refused with the holder named."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import jpeg, run_cli
from roadwork_cache.store.cache import Cache
from roadwork_cache.synth.dataset import write_synthetic

CLI = [sys.executable, "-m", "roadwork_cache.cli"]
QUIET = ("--view-size", "32", "--no-progress", "--no-text", "--device", "cpu")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    write_synthetic(folder, 40, seed=5, sizes=[(160, 96), (96, 160)])
    return folder


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited


def spawned_worker(pid: int) -> bool:
    """A multiprocessing worker started by spawn (not, e.g., its resource tracker)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def wait_for_workers(
    proc: subprocess.Popen, n: int, timeout: float = 120, spawned: bool = False
) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = [p for p in children(proc.pid) if not spawned or spawned_worker(p)]
        if len(found) >= n:
            return found
        time.sleep(0.02)
    raise AssertionError(f"the run never had {n} workers (exit {proc.poll()})")


def kill_after_workers_start(
    args: list[str], n: int, settle: float, spawned: bool = False
) -> list[int]:
    """Start `roadwork ARGS`, wait for its `n` workers, let them work `settle` seconds, then
    SIGKILL the run; returns the workers' pids."""
    proc = subprocess.Popen(
        [*CLI, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    workers = wait_for_workers(proc, n, spawned=spawned)
    time.sleep(settle)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return workers


def assert_gone(pids: list[int], within: float) -> None:
    deadline = time.time() + within
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    left = [p for p in pids if alive(p)]
    assert not left, f"workers {left} outlived their killed parent"


def test_a_killed_extract_leaves_no_worker_and_an_immediate_resume_runs(
    monkeypatch, source, tmp_path
):
    cache = tmp_path / "cache"
    args = [
        *CLI,
        "extract",
        f"{source}/*.parquet",
        "--cache",
        str(cache),
        "--variants",
        "clean,aug:1",
        "--shard-rows",
        "40",
        "--workers",
        "2",
        *QUIET,
    ]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = wait_for_workers(proc, 2)
    time.sleep(0.5)  # the workers are decoding
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_gone(workers, within=2.0)
    assert run_cli(monkeypatch, *args[len(CLI) :]) == 0  # not refused: no one holds the lock
    assert Cache.open(cache).attrs["complete"] is True


def test_a_killed_predict_leaves_no_worker(tmp_path):
    from helpers import tiny_models

    run, _ = tiny_models(tmp_path, view_size=32)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(200):
        (images / f"{i:03d}.jpg").write_bytes(jpeg((i % 256, 90, 30), (320, 240)))
    args = ["predict", str(images), "--model", str(run), "--workers", "2", "--batch-size", "2"]
    workers = kill_after_workers_start([*args, "--tta", "--device", "cpu", "--no-progress"], 2, 0.5)
    assert_gone(workers, within=2.0)


def test_a_killed_ensemble_leaves_no_fold_worker(tmp_path):
    from helpers import HEAD_32, planted_cache

    cache, _, _ = planted_cache(tmp_path / "cache", n=240, dim=16)
    members = tmp_path / "members.json"
    members.write_text(json.dumps([{"name": f"m{i}", "seed": i, "head": HEAD_32} for i in (1, 2)]))
    args = ["ensemble", "--cache", str(cache), "--out", str(tmp_path / "ens")]
    args += ["--members", str(members), "--jobs", "2", "--epochs", "500", "--patience", "500"]
    args += ["--dora-folds", "0", "--device", "cpu", "--no-progress"]
    # the workers import torch, load the cache and train (jobs of minutes); the pool's
    # workers, not its resource tracker
    workers = kill_after_workers_start(args, 2, settle=6.0, spawned=True)
    assert_gone(workers, within=2.0)


HOLD_AND_FORK = """
import os, sys, time
from roadwork_cache.store.lock import writer_lock
with writer_lock(sys.argv[1]):
    if os.fork() == 0:  # a child that knows nothing of the lock, and outlives its parent
        time.sleep(60)
        os._exit(0)
    print("ready", flush=True)
    time.sleep(60)
"""


def test_a_child_forked_under_the_lock_does_not_hold_it_after_the_writer_dies(tmp_path):
    from roadwork_cache.store.lock import writer_lock

    cache = tmp_path / "cache"
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_FORK, str(cache)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "ready"
    (child,) = children(writer.pid)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    try:
        assert alive(child)
        with writer_lock(cache):  # the orphan shares the lock's open file, not the lock
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("killed", [1, 0])
def test_when_a_rank_dies_the_other_stops_in_one_sentence_and_the_cache_resumes(
    monkeypatch, source, tmp_path, killed
):
    cache = tmp_path / "cache"
    args = [
        *CLI,
        "extract",
        f"{source}/*.parquet",
        "--cache",
        str(cache),
        "--variants",
        "clean,natix:1",
        "--shard-rows",
        "4",
        "--workers",
        "0",
        *QUIET,
    ]
    port = str(free_port())
    ranks = [
        subprocess.Popen(
            args,
            env={
                **ENV,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    markers = cache / "progress" / "features"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(markers.glob("*/*.done"))) < 2:
        time.sleep(0.01)
    ranks[killed].send_signal(signal.SIGKILL)
    ranks[killed].wait()
    other = ranks[1 - killed]
    try:
        _, err = other.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        other.kill()
        raise AssertionError(f"rank {1 - killed} hangs after rank {killed} died") from None
    assert other.returncode == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("error: "), err[-2000:]
    assert "re-run the same command to resume" in lines[-1]
    assert run_cli(monkeypatch, *args[len(CLI) :]) == 0
    assert Cache.open(cache).attrs["complete"] is True


def test_of_two_writers_starting_a_new_cache_one_is_refused(source, tmp_path):
    cache = tmp_path / "cache"
    args = [
        *CLI,
        "extract",
        f"{source}/*.parquet",
        "--cache",
        str(cache),
        "--variants",
        "clean,aug:1",
        "--shard-rows",
        "8",
        "--workers",
        "0",
        *QUIET,
    ]
    writers = [
        subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(w.wait(timeout=300), w.stderr.read()) for w in writers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip().splitlines()[-1]
    assert refused.startswith("error: ") and "is being written by pid" in refused
    winner = next(w for w, (code, _) in zip(writers, results, strict=True) if code == 0)
    assert f"pid {winner.pid} " in refused
    assert Cache.open(cache).attrs["complete"] is True

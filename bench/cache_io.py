"""Feature-cache I/O: the Zarr cache against HDF5, a `.npy` memmap and `torch.save`.

    python bench/cache_io.py                          # N = 8,549 rows, the real dataset size
    python bench/cache_io.py --rows 2000 --repeats 2  # a quick look
    python bench/cache_io.py --chunk-rows 64 --shard-rows 2048 --zarr-concurrency 32

One float16 array [rows, views, dim] of seeded random values (the shape of one cache variant)
is written to and read back from each format in the same run:

- zarr cache      the real `Cache` API, as `roadwork extract` writes it: `Cache.create`,
                  `ensure_variant("clean")`, `write_features` per shard (which also hashes the
                  shard for its done-marker); read with `Cache.features("clean")`, which
                  reads the shard files straight into the output array (`store.read_whole`).
- zarr array[:]   the same cache files through zarr's own codec pipeline, for comparison.
- hdf5 chunked    h5py, chunks of `--chunk-rows` rows like the cache, no compression.
- hdf5 default    h5py's default layout: contiguous, no compression.
- npy memmap      `np.save`; read with `np.load(mmap_mode="r")`, then copied into memory.
- torch.save      a torch tensor; read with `torch.load(weights_only=True, mmap=False)`.
- torch mmap      the same file read with `mmap=True`, then copied into memory.

Measured, the best of `--repeats` runs each (the read repeats interleave the formats):
- write MB/s: from nothing to a file on disk, `os.sync()` included;
- full read MB/s: the whole array into memory as a numpy array, opening included. "cold" is
  after evicting the files from the OS page cache (`/proc/sys/vm/drop_caches` as root, else
  `posix_fadvise(DONTNEED)` per file); "warm" is the same read straight after, from the cache;
- mini-batch rows/s: `--batches` batches of `--batch` sorted, distinct random row indices
  (the same indices for every format), each read with fancy indexing, opening included; cold
  (evicted first) and warm. A whole-file format (torch.save without mmap) has no such read.

"vs npy" is a ratio of times against the `.npy` memmap: 1.00 is as fast, 2.00 twice as slow.
The goal: a full read of the Zarr cache within 1.25x of the memmap, cold and warm alike.
On a shared machine the timings are noisy (more repeats help): compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import torch
import zarr

from roadwork_cache.store.cache import Cache

MB = 1e6
GOAL = 1.25
VARIANT = "clean"
BASELINE = "npy"
FORMAT_KEYS = ["zarr", "zarr-pipeline", "hdf5-chunked", "hdf5", BASELINE, "torch", "torch-mmap"]


# ---- formats ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """How one format writes, fully reads and batch-reads the array at `path`."""

    key: str  # for --formats
    name: str
    path: Path
    write: Callable[[Path, np.ndarray], None]
    read_full: Callable[[Path], np.ndarray]
    read_batches: Callable[[Path, list[np.ndarray]], list[np.ndarray]] | None
    shares_file: bool = False  # reads another row's file: written only if that row is skipped


def zarr_writer(chunk_rows: int, shard_rows: int) -> Callable[[Path, np.ndarray], None]:
    def write(path: Path, data: np.ndarray) -> None:
        n_rows, n_views, dim = data.shape
        cache = Cache.create(
            path,
            n_rows=n_rows,
            n_views=n_views,
            feature_dim=dim,
            attrs={},
            shard_rows=shard_rows,
            chunk_rows=chunk_rows,
        )
        cache.ensure_variant(VARIANT)
        for shard in cache.shards():
            cache.write_features(VARIANT, shard, data[shard.start : shard.stop])

    return write


def zarr_read_full(path: Path) -> np.ndarray:
    return Cache.open(path).features(VARIANT)


def zarr_read_batches(path: Path, batches: list[np.ndarray]) -> list[np.ndarray]:
    array = Cache.open(path).group[f"features/{VARIANT}"]
    return [array.oindex[idx] for idx in batches]


def zarr_pipeline_full(path: Path) -> np.ndarray:
    """The same cache through zarr's own read path, which `Cache.features` bypasses."""
    return Cache.open(path).group[f"features/{VARIANT}"][:]


def hdf5_writer(chunk_rows: int | None, block_rows: int) -> Callable[[Path, np.ndarray], None]:
    """chunk_rows None is h5py's default: a contiguous dataset. Written a block at a time, the
    way extract writes shards."""

    def write(path: Path, data: np.ndarray) -> None:
        chunks = None if chunk_rows is None else (chunk_rows, *data.shape[1:])
        with h5py.File(path, "w") as f:
            dataset = f.create_dataset(
                "features", shape=data.shape, dtype=data.dtype, chunks=chunks
            )
            for start in range(0, len(data), block_rows):
                dataset[start : start + block_rows] = data[start : start + block_rows]

    return write


def hdf5_read_full(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["features"][()]


def hdf5_read_batches(path: Path, batches: list[np.ndarray]) -> list[np.ndarray]:
    with h5py.File(path, "r") as f:
        dataset = f["features"]
        return [dataset[idx] for idx in batches]  # h5py needs increasing, distinct indices


def npy_write(path: Path, data: np.ndarray) -> None:
    np.save(path, data)


def npy_read_full(path: Path) -> np.ndarray:
    return np.array(np.load(path, mmap_mode="r"))  # np.array copies: the bytes are read


def npy_read_batches(path: Path, batches: list[np.ndarray]) -> list[np.ndarray]:
    memmap = np.load(path, mmap_mode="r")
    return [memmap[idx] for idx in batches]


def torch_write(path: Path, data: np.ndarray) -> None:
    torch.save(torch.from_numpy(data), path)


def torch_read_full(path: Path) -> np.ndarray:
    return torch.load(path, weights_only=True, mmap=False).numpy()


def torch_mmap_read_full(path: Path) -> np.ndarray:
    return torch.load(path, weights_only=True, mmap=True).clone().numpy()


def torch_mmap_read_batches(path: Path, batches: list[np.ndarray]) -> list[np.ndarray]:
    tensor = torch.load(path, weights_only=True, mmap=True)
    return [tensor[torch.from_numpy(idx)].numpy() for idx in batches]


def all_formats(root: Path, chunk_rows: int, shard_rows: int) -> list[Format]:
    torch_file = root / "features.pt"
    return [
        Format(
            "zarr",
            f"zarr cache (chunk {chunk_rows}, shard {shard_rows})",
            root / "cache",
            zarr_writer(chunk_rows, shard_rows),
            zarr_read_full,
            zarr_read_batches,
        ),
        Format(
            "zarr-pipeline",
            "zarr array[:] (zarr's read path)",
            root / "cache",
            zarr_writer(chunk_rows, shard_rows),
            zarr_pipeline_full,
            None,
            shares_file=True,
        ),
        Format(
            "hdf5-chunked",
            f"hdf5 chunked ({chunk_rows} rows)",
            root / "chunked.h5",
            hdf5_writer(chunk_rows, shard_rows),
            hdf5_read_full,
            hdf5_read_batches,
        ),
        Format(
            "hdf5",
            "hdf5 default (contiguous)",
            root / "contiguous.h5",
            hdf5_writer(None, shard_rows),
            hdf5_read_full,
            hdf5_read_batches,
        ),
        Format(
            BASELINE,
            "npy memmap",
            root / "features.npy",
            npy_write,
            npy_read_full,
            npy_read_batches,
        ),
        Format("torch", "torch.save", torch_file, torch_write, torch_read_full, None),
        Format(
            "torch-mmap",
            "torch.save mmap=True",
            torch_file,
            torch_write,
            torch_mmap_read_full,
            torch_mmap_read_batches,
            shares_file=True,
        ),
    ]


# ---- page cache -------------------------------------------------------------------------------


def files_under(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
    else:
        yield from (p for p in path.rglob("*") if p.is_file())


def evict(path: Path) -> str:
    """Drop `path` from the OS page cache; returns how ("drop_caches", "fadvise") or "warm"."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        pass
    if not hasattr(os, "posix_fadvise"):
        return "warm"
    for file in files_under(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise"


# ---- timing -----------------------------------------------------------------------------------


@dataclass
class Result:
    write_s: float | None = None
    full_cold_s: float = float("inf")
    full_warm_s: float = float("inf")
    batch_cold_s: float | None = None
    batch_warm_s: float | None = None
    # every repeat's full-read times, in repeat order, for ratios paired by repeat
    full_cold_runs: list[float] = field(default_factory=list)
    full_warm_runs: list[float] = field(default_factory=list)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def time_write(fmt: Format, data: np.ndarray, repeats: int) -> float | None:
    if fmt.shares_file and fmt.path.exists():
        return None
    best = float("inf")
    for _ in range(repeats):
        remove(fmt.path)
        os.sync()
        start = time.perf_counter()
        fmt.write(fmt.path, data)
        os.sync()
        best = min(best, time.perf_counter() - start)
    return best


def time_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def check_reads(fmt: Format, data: np.ndarray, batches: list[np.ndarray]) -> None:
    """Each format must read back exactly what was written (outside the timings)."""
    check(fmt.read_full(fmt.path), data, fmt.name)
    if fmt.read_batches is not None:
        for idx, got in zip(batches[:2], fmt.read_batches(fmt.path, batches[:2]), strict=True):
            check(got, data[idx], fmt.name)


def measure_reads(fmt: Format, batches: list[np.ndarray], result: Result) -> set[str]:
    """One repeat: cold then warm full read, cold then warm mini-batches; keeps the best."""
    modes = {evict(fmt.path)}
    read_full = partial(fmt.read_full, fmt.path)
    result.full_cold_runs.append(time_call(read_full))
    result.full_warm_runs.append(time_call(read_full))
    result.full_cold_s = min(result.full_cold_runs)
    result.full_warm_s = min(result.full_warm_runs)
    if fmt.read_batches is not None:
        read_batches = partial(fmt.read_batches, fmt.path, batches)
        modes.add(evict(fmt.path))
        result.batch_cold_s = min(result.batch_cold_s or float("inf"), time_call(read_batches))
        result.batch_warm_s = min(result.batch_warm_s or float("inf"), time_call(read_batches))
    return modes


def check(got: np.ndarray, want: np.ndarray, name: str) -> None:
    if not isinstance(got, np.ndarray) or got.dtype != want.dtype or not np.array_equal(got, want):
        raise AssertionError(f"{name} read back something else than was written")


# ---- inputs and report ------------------------------------------------------------------------


def random_features(rows: int, views: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, views, dim), dtype=np.float16)
    for start in range(0, rows, 1024):
        block = out[start : start + 1024]
        block[...] = rng.standard_normal(block.shape, dtype=np.float32)
    return out


def random_batches(rows: int, batch: int, n_batches: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    size = min(batch, rows)
    return [np.sort(rng.choice(rows, size=size, replace=False)) for _ in range(n_batches)]


def host_line() -> str:
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    return (
        f"host: {platform.node()} {platform.machine()}, {cpus} CPUs ({usable} usable), "
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"zarr {zarr.__version__}, h5py {h5py.__version__} "
        f"(HDF5 {h5py.version.hdf5_version}), torch {torch.__version__}"
    )


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def per_second(amount: float, seconds: float | None) -> float | None:
    return None if seconds is None else amount / seconds


def ratio(seconds: float | None, baseline: float | None) -> float | None:
    return None if seconds is None or baseline is None else seconds / baseline


def print_table(
    formats: list[Format], results: dict[str, Result], size_mb: float, rows_read: int
) -> None:
    base = results[BASELINE]
    header = [
        "format",
        "write MB/s",
        "full read MB/s cold",
        "vs npy",
        "warm",
        "vs npy",
        "minibatch rows/s cold",
        "vs npy",
        "warm",
        "vs npy",
    ]
    lines = [header]
    for fmt in formats:
        r = results[fmt.key]
        lines.append(
            [
                fmt.name,
                fmt_rate(per_second(size_mb, r.write_s)),
                fmt_rate(per_second(size_mb, r.full_cold_s)),
                fmt_ratio(ratio(r.full_cold_s, base.full_cold_s)),
                fmt_rate(per_second(size_mb, r.full_warm_s)),
                fmt_ratio(ratio(r.full_warm_s, base.full_warm_s)),
                fmt_rate(per_second(rows_read, r.batch_cold_s)),
                fmt_ratio(ratio(r.batch_cold_s, base.batch_cold_s)),
                fmt_rate(per_second(rows_read, r.batch_warm_s)),
                fmt_ratio(ratio(r.batch_warm_s, base.batch_warm_s)),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        print(" | ".join(cells))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


def goal_ratios(results: dict[str, Result], key: str, cold: bool) -> dict[str, float]:
    """Full-read time of `key` over the memmap's, cold and warm (warm only, where the page
    cache could not be dropped): the median over repeats of the ratio within each repeat.
    Pairing by repeat cancels a busy spell that slows both; the median drops a lucky or an
    unlucky repeat, which the best-of figures of the table do not."""
    got, npy = results[key], results[BASELINE]

    def paired(a: list[float], b: list[float]) -> float:
        return float(np.median(np.asarray(a) / np.asarray(b)))

    ratios = {"warm": paired(got.full_warm_runs, npy.full_warm_runs)}
    return {"cold": paired(got.full_cold_runs, npy.full_cold_runs), **ratios} if cold else ratios


def goal_line(label: str, ratios: dict[str, float]) -> str:
    """Met when the full read is within GOAL of the memmap, cold and warm alike."""
    verdict = "MET" if max(ratios.values()) <= GOAL else "NOT MET"
    shown = ", ".join(f"{value:.2f} {mode}" for mode, value in ratios.items())
    return f"{label}: {verdict} (median paired ratio {shown})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=8549)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--batch", type=int, default=256, help="rows per random mini-batch")
    parser.add_argument("--batches", type=int, default=50, help="mini-batches per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timings keep the best repeat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to write the files (default: a fresh temporary folder)",
    )
    parser.add_argument("--chunk-rows", type=int, default=16, help="Cache.create chunk_rows")
    parser.add_argument("--shard-rows", type=int, default=1024, help="Cache.create shard_rows")
    parser.add_argument(
        "--zarr-concurrency",
        type=int,
        default=None,
        help="zarr.config async.concurrency (zarr's default: 10)",
    )
    parser.add_argument(
        "--formats",
        default=",".join(FORMAT_KEYS),
        help=f"comma-separated subset of {','.join(FORMAT_KEYS)}; npy (the baseline) is always run",
    )
    args = parser.parse_args()
    args.formats = [key.strip() for key in args.formats.split(",") if key.strip()]
    unknown = set(args.formats) - set(FORMAT_KEYS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}; choose from {FORMAT_KEYS}")
    return args


def main() -> None:
    args = parse_args()
    if args.zarr_concurrency is not None:
        zarr.config.set({"async.concurrency": args.zarr_concurrency})
    data = random_features(args.rows, args.views, args.dim, args.seed)
    batches = random_batches(args.rows, args.batch, args.batches, args.seed)
    size_mb = data.nbytes / MB
    rows_read = len(batches) * len(batches[0])
    parent = args.dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)

    print(host_line())
    print(
        f"zarr async.concurrency {zarr.config.get('async.concurrency')}, "
        f"threading.max_workers {zarr.config.get('threading.max_workers')}; files under "
        f"{parent}"
    )
    print(
        f"data: float16 [{args.rows}, {args.views}, {args.dim}] = {size_mb:,.1f} MB; "
        f"minibatches: {len(batches)} x {len(batches[0])} sorted random rows; "
        f"best of {args.repeats} repeats",
        flush=True,
    )

    root = Path(tempfile.mkdtemp(prefix="cache_io-", dir=parent))
    wanted = set(args.formats) | {BASELINE}
    formats = [f for f in all_formats(root, args.chunk_rows, args.shard_rows) if f.key in wanted]
    results: dict[str, Result] = {}
    modes: set[str] = set()
    try:
        for fmt in formats:
            results[fmt.key] = Result(write_s=time_write(fmt, data, args.repeats))
            check_reads(fmt, data, batches)
        for _ in range(args.repeats):  # formats interleaved: a busy spell hits them all alike
            for fmt in formats:
                modes |= measure_reads(fmt, batches, results[fmt.key])
    finally:
        shutil.rmtree(root, ignore_errors=True)

    cold = modes != {"warm"}
    if cold:
        how = ", ".join(sorted(modes - {"warm"}))
        print(
            f"reads: cold = page cache dropped before each cold read ({how}); warm = the same "
            "read again straight after"
        )
    else:
        print("reads: warm cache (could not drop the page cache): the cold columns are warm too")
    print(
        "write includes os.sync(); vs npy: ratio of times against the npy memmap "
        "(1.00x as fast, 2.00x twice as slow)"
    )
    print()
    print_table(formats, results, size_mb, rows_read)
    print()
    if "zarr" in results:
        label = f"goal (zarr full read within {GOAL}x of npy memmap)"
        print(goal_line(label, goal_ratios(results, "zarr", cold)))
    if "zarr-pipeline" in results:
        label = "zarr's own read path (array[:]), for comparison"
        print(goal_line(label, goal_ratios(results, "zarr-pipeline", cold)))


if __name__ == "__main__":
    main()

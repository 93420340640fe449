"""`roadwork cache verify`: every shard re-read against its checksum, and `--repair`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from roadwork_cache.store.cache import Cache, checksum
from roadwork_cache.store.samples import SAMPLES_FILE


@dataclass(frozen=True)
class Problem:
    """One thing `verify` found wrong; `array`/`shard` say which marker a repair drops."""

    message: str
    array: str | None = None
    shard: int | None = None


def verify(cache: Cache, advance: Callable[[int], None] | None = None) -> list[Problem]:
    """Every problem of a cache, one sentence each: shards not written, bytes that differ
    from what was written (the marker's checksum), non-finite features, missing sample rows.
    `advance(1)` is called after each (array, shard) checked, for a progress bar."""
    problems: list[Problem] = []
    shards = cache.shards()
    for name in verify_arrays(cache):
        done = cache.done_shards(name)
        for shard in shards:
            if advance is not None:
                advance(1)
            where = f"{name} shard {shard.index} (rows {shard.start}-{shard.stop - 1})"
            if shard.index not in done:
                problems.append(Problem(f"{where} was never completed"))
                continue
            expected = cache._marker(name, shard.index).read_text().strip()
            arrays = [name, "text_mask"] if name == "text" else [name]
            try:
                data = [cache.group[a][shard.start : shard.stop] for a in arrays]
            except Exception as exc:
                problems.append(Problem(f"{where} cannot be read: {exc}", name, shard.index))
                continue
            if expected and checksum(*data) != expected:
                problems.append(
                    Problem(
                        f"{where} differs from what was written (checksum mismatch)",
                        name,
                        shard.index,
                    )
                )
            bad = int((~np.isfinite(data[0].astype(np.float32))).sum())
            if bad:
                problems.append(
                    Problem(f"{where} holds {bad} non-finite values", name, shard.index)
                )
    done = cache.done_shards("samples")
    problems += [
        Problem(f"sample rows of shard {s.index} were never written")
        for s in shards
        if s.index not in done
    ]
    path = cache.root / SAMPLES_FILE
    if not problems:
        if not path.is_file():
            problems.append(Problem(f"{SAMPLES_FILE} is missing; re-run extract to finalise"))
        elif (rows := pq.read_metadata(path).num_rows) != cache.n_rows:
            problems.append(Problem(f"{SAMPLES_FILE} has {rows} rows, not {cache.n_rows}"))
    return problems


def verify_arrays(cache: Cache) -> list[str]:
    """The arrays `verify` checks shard by shard."""
    return [f"features/{v}" for v in cache.variants()] + ["text"] + cache.mask_arrays()


def repair(cache: Cache, problems: list[Problem]) -> int:
    """Drop the done-markers of damaged shards so the next `extract` recomputes them."""
    dropped = 0
    for problem in problems:
        if problem.array is not None and problem.shard is not None:
            cache._marker(problem.array, problem.shard).unlink(missing_ok=True)
            dropped += 1
    if dropped:
        cache.update_attrs(complete=False)
    return dropped

"""Whole-array reads of the cache's shard files at the speed of a memmap copy."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, Endian, ShardingCodec, ShardingCodecIndexLocation
from zarr.storage import LocalStore

from roadwork_cache.runtime.errors import UserError

EMPTY_CHUNK = np.iinfo(np.uint64).max  # a shard-index entry for a chunk never written


def read_whole(array: zarr.Array) -> np.ndarray:
    """The whole array in memory, equal to `array[:]`, read at the speed of a memmap copy.

    zarr 3.1 copies every byte about three times on a full read (shard file into bytes, chunk
    into a shard buffer, that buffer into the output), which made a full variant 2-6x slower
    to load than a `.npy` memmap (bench/cache_io.py). For the layout this module writes
    (shards of whole rows on local disk, raw little-endian chunks, the index at the end)
    the shard files are read straight into the output instead: one copy, like the memmap.
    Any other layout goes through zarr.
    """
    if not _plain_sharded(array):
        return array[:]
    n_rows, shard_rows, chunk_rows = array.shape[0], array.shards[0], array.chunks[0]
    out = np.empty(array.shape, dtype=array.dtype)  # not np.full: it would write every byte twice
    rows = out.reshape(n_rows, -1)
    fill = array.fill_value
    folder = Path(str(array.store_path.store.root)) / array.store_path.path
    for start in range(0, n_rows, shard_rows):
        key = array.metadata.encode_chunk_key((start // shard_rows, *[0] * (array.ndim - 1)))
        file = folder / key
        if not file.is_file():  # a shard never written reads as the fill value, as in zarr
            rows[start : start + shard_rows] = fill
            continue
        with open(file, "rb", buffering=0) as f:
            index = _read_shard_index(f, shard_rows // chunk_rows)
            for chunk, (offset, nbytes) in enumerate(index):
                lo = start + chunk * chunk_rows
                hi = min(lo + chunk_rows, n_rows)
                if lo >= hi:  # past the end of the array, in the last shard
                    break
                if offset == EMPTY_CHUNK:
                    rows[lo:hi] = fill
                    continue
                if nbytes != chunk_rows * rows.shape[1] * rows.itemsize:
                    raise UserError(
                        f"{file}: chunk {chunk} holds {nbytes} bytes, not a whole "
                        "chunk; run `roadwork cache verify`"
                    )
                # An edge chunk is stored full size; its rows inside the array come first.
                view = memoryview(rows[lo:hi]).cast("B")
                f.seek(int(offset))
                if f.readinto(view) != view.nbytes:
                    raise UserError(
                        f"{file}: chunk {chunk} is cut short; run `roadwork cache verify`"
                    )
    return out


def _read_shard_index(f: BinaryIO, n_chunks: int) -> np.ndarray:
    """[n_chunks, 2] (offset, nbytes) from the end of a shard file, its crc32c checked."""
    size = n_chunks * 16 + 4
    raw = b""
    if os.fstat(f.fileno()).st_size >= size:
        f.seek(-size, os.SEEK_END)
        raw = f.read(size)
    if len(raw) != size or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
        raise UserError(f"{f.name}: the shard index is damaged; run `roadwork cache verify`")
    return np.frombuffer(raw[:-4], dtype="<u8").reshape(n_chunks, 2)


def _plain_sharded(array: zarr.Array) -> bool:
    """Whether `array` is laid out as `_create_array` makes it: one sharding codec of whole
    rows, raw little-endian chunks (no compression), a crc32c index at the end, on local
    disk, read on a little-endian machine."""
    if array.metadata.zarr_format != 3 or not isinstance(array.store_path.store, LocalStore):
        return False
    codecs = array.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    sharding = codecs[0]
    inner, index = sharding.codecs, sharding.index_codecs
    little = [
        isinstance(c, BytesCodec) and c.endian in (None, Endian.little)
        for c in (*inner, *index[:1])
    ]
    return (
        len(inner) == 1
        and len(index) == 2
        and all(little)
        and isinstance(index[1], Crc32cCodec)
        and sharding.index_location == ShardingCodecIndexLocation.end
        and array.chunks[1:] == array.shards[1:] == array.shape[1:]
        and array.shards[0] % array.chunks[0] == 0
        and sys.byteorder == "little"
    )

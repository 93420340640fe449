"""One writer per cache: an OS lock that dies with its process and names its holder.

The lock is an `flock` on `<cache>/.lock`, taken before anything of the cache is created
(and the cache's creation never deletes it). An flock belongs to the open file, which a
forked child (a DataLoader worker) shares: a child that outlived a killed writer would keep
the cache locked. So every child forked while the lock is held lets go of it at once
(`_release_in_child`), and only the writer process itself holds it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import check_folder_path

LOCK_FILE = ".lock"

_HELD: set[int] = set()  # descriptors of the locks this process holds


def _release_in_child() -> None:
    """Runs in a forked child: point each inherited lock descriptor at /dev/null, which drops
    the child's share of the lock (the number stays valid, so a later close is harmless)."""
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    for fd in _HELD:
        with suppress(OSError):
            os.dup2(null, fd, inheritable=False)
    os.close(null)
    _HELD.clear()


os.register_at_fork(after_in_child=_release_in_child)


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "another process"


def check_cache_path(root: str | Path) -> Path:
    """A cache path must be a folder or not exist yet: one sentence naming --cache if not."""
    return check_folder_path(Path(root), "--cache", "a cache folder")


def refuse_if_locked(root: str | Path) -> None:
    """Refuse now, before any slow work, when another process writes the cache. Creates
    nothing: no lock file means no writer."""
    path = Path(root) / LOCK_FILE
    if not path.is_file():
        return
    with open(path) as handle:
        _lock_or_refuse(handle, root)
        fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_or_refuse(handle: IO[str], root: str | Path) -> None:
    """Take the exclusive lock on the open lock file, or refuse naming its holder."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(
            f"cache {root} is being written by {_holder(handle)}; wait for it or stop it"
        ) from None


@contextmanager
def writer_lock(root: str | Path) -> Iterator[None]:
    """One writer per cache. The OS drops the lock when its process dies (SIGKILL too), so a
    killed run never leaves a stale lock; a live one is named in the refusal."""
    root = check_cache_path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+") as handle:
        _lock_or_refuse(handle, root)
        _HELD.add(handle.fileno())
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(
                f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
            )
            handle.flush()
            yield
        finally:
            _HELD.discard(handle.fileno())
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)

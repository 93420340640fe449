"""One writer per cache: an OS lock that dies with its process and names its holder."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from roadwork_cache.runtime.errors import UserError

LOCK_FILE = ".lock"


@contextmanager
def writer_lock(root: str | Path) -> Iterator[None]:
    """One writer per cache. The OS drops the lock when its process dies (SIGKILL too), so a
    killed run never leaves a stale lock; a live one is named in the refusal."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(
                f"cache {root} is being written by {holder}; wait for it or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)

"""Worker processes that die with their parent.

A DataLoader worker of a run killed with SIGKILL would otherwise live on (its parent gone,
holding shared memory and decoding for no one) until it next polls its parent, which may
be never while its output pipe is full. On Linux `PR_SET_PDEATHSIG` has the kernel kill it
the moment the parent dies; elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """In a child process: be killed when `parent` dies, and go now if it already has (the
    parent may have died between the fork and this call)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _worker_init(parent: int, _worker_id: int) -> None:
    die_with_parent(parent)


def worker_init_fn() -> Callable[[int], None]:
    """A DataLoader `worker_init_fn` that ties each worker's life to this process."""
    return functools.partial(_worker_init, os.getpid())

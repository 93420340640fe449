"""Device choice and the precision a device computes in: one place for every stage."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from roadwork_cache.runtime.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def default_workers(device: torch.device) -> int:
    cores = os.cpu_count() or 1
    # On CPU the backbone needs the cores itself; on a GPU box decoding is the bottleneck.
    return min(8 if device.type == "cuda" else 1, max(cores - 1, 0))


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def keeps_torch_threads(fn: F) -> F:
    """A stage that sets torch's intra-op threads for its own work (beside decoding workers)
    gives the caller's setting back when it returns: it is process-global."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper  # type: ignore[return-value]

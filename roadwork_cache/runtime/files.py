"""Small file helpers every writer shares: JSON written atomically, JSON read in one sentence,
the sha256 of files."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from roadwork_cache.runtime.errors import UserError


def write_json(path: Path, value: Any) -> Path:
    """Write `value` as indented JSON; a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=float))
    tmp.replace(path)
    return path


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"cannot read {path}: {reason}") from None


def check_folder_path(path: Path, flag: str, what: str) -> Path:
    """A folder a command will write: it must be a folder or not exist yet, and not lie under
    a file. One sentence naming the flag otherwise (instead of FileExistsError or
    NotADirectoryError once the work is done)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not {what}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path} lies under {parent}, which is a file")
            break
    return path


def files_sha256(paths: Iterable[Path]) -> str:
    """sha256 of the files' bytes, read in the order given, as if they were one file."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()

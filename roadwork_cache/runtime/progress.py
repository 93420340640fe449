"""Progress bars and console output shared by the stages (rich).

Two consoles: `console` (stderr) for progress bars, log lines and warnings; `results`
(stdout) for what a command answers: its summary table(s) and closing lines, so that
`roadwork train-head ... > out.txt` keeps the table and the terminal keeps the progress.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Piped or logged output gets a wide fixed width so that metric tables stay readable.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


results = Console(width=None if sys.stdout.isatty() else 160)


def progress_bar(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )

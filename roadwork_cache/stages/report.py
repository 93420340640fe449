"""`roadwork report`: one self-contained HTML page about a `roadwork train-head` run.

Read top to bottom: load the run folder (config, metrics, audit, predictions), pick the set
to look at, join the cache's per-row metadata when the cache still exists, score groups, draw
the plots (matplotlib, no pyplot state) as base64 PNG data URIs, and assemble the page. The
page analyses the head's metadata-free probability on the clean views: that is what a
validator's image gets. Every string that comes from data goes through ``html.escape``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from roadwork_cache.inference.run_folder import REPORT_FILE, RunFolder, read_run
from roadwork_cache.reports.analysis import PROB_COLUMN, choose_set
from roadwork_cache.reports.html import render_page
from roadwork_cache.runtime.errors import UserError


def load_run(root: Path) -> RunFolder:
    """A finished train-head run with the probability column the report analyses."""
    return read_run(Path(root), PROB_COLUMN)


def load_samples(cache: str | None) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """Per-id metadata from the run's cache, or None and why not: the page is still worth
    having without it, so a vanished or unreadable cache is a note, not an error."""
    if not cache:
        return None, "config.json records no cache folder"
    if not Path(cache).exists():
        return None, f"the cache folder {cache} recorded in config.json no longer exists"
    from roadwork_cache.store.cache import Cache

    try:
        table = Cache.open(cache).samples()
    except UserError as exc:
        return None, str(exc)
    return {str(row["id"]): row for row in table.to_pylist()}, ""


def write_report(run: Path, out: Path | None = None, set_name: str | None = None) -> Path:
    """Write the HTML report of a train-head run folder; returns the page's path."""
    run = Path(run)
    loaded = load_run(run)
    data = choose_set(loaded, set_name)
    samples, why = load_samples(loaded.record.cache)
    page = render_page(loaded, data, samples, why)
    out = Path(out) if out is not None else run / REPORT_FILE
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the report to {out}: {exc}") from None
    return out

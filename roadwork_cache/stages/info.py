"""`roadwork cache info`: a cache described as a table."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _counts(values: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in values.items()) or "-"


def cache_info_table(info: dict[str, Any]) -> Table:
    table = Table(title=f"cache {info['path']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("rows", str(info["rows"]))
    table.add_row("complete", str(info["complete"]))
    for key in ("splits", "labels", "statuses"):
        if key in info:
            table.add_row(key, _counts(info[key]))
    if "text_rows" in info:
        table.add_row("rows with text", str(info["text_rows"]))
    for name, arr in info["arrays"].items():
        table.add_row(f"array {name}", f"{arr['dtype']} {arr['shape']}")
    backbone = info.get("backbone", {})
    table.add_row(
        "backbone",
        f"{backbone.get('preset')} ({backbone.get('format')}), {backbone.get('feature_dim')}-d "
        f"{backbone.get('pool')}, view {backbone.get('view_size')} px",
    )
    if backbone.get("random_init"):
        table.add_row(
            "[yellow]warning",
            "[yellow]random backbone weights: scores on this cache "
            "demonstrate the machinery, not quality",
        )
    else:
        table.add_row(
            "weights",
            f"{backbone.get('weights')} sha256 {str(backbone.get('weights_sha256'))[:12]}",
        )
    views = info.get("views", {})
    table.add_row("views", f"{views.get('layout')}: {views.get('n_views')} views")
    by_kind: dict[str, list[dict]] = {}
    for name, recipe in info.get("variants", {}).items():
        by_kind.setdefault(recipe.get("kind", name), []).append({"name": name, **recipe})
    for kind, recipes in sorted(by_kind.items()):
        names = ", ".join(r["name"] for r in recipes)
        table.add_row(f"variants {kind}", f"{names} (recipe v{recipes[0].get('version')})")
        for op in recipes[0].get("ops", []):
            table.add_row("", f"[dim]{op}")
    table.add_row("source", str(info.get("source")))
    table.add_row("created", f"{info.get('created')} by roadwork-cache {info.get('tool_version')}")
    return table

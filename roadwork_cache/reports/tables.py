"""TODO docstring."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from roadwork_cache.inference.predictor import Answer, Predictor


def train_head_table(rows: list[dict[str, Any]], random_init: bool) -> Table:
    title = "train-head: metrics (metadata 'none' is what a validator sends)"
    if random_init:
        title += "\n[yellow]random backbone weights: this measures the machinery, not quality"
    table = Table(title=title)
    for col in (
        "model",
        "set",
        "variant",
        "metadata",
        "thr",
        "MCC",
        "acc",
        "prec",
        "rec",
        "F1",
        "AUC",
        "reward",
        "n",
    ):
        table.add_column(col, justify="right" if col not in ("model", "set", "variant") else "left")
    for r in rows:
        table.add_row(
            r["model"],
            r["set"],
            r["variant"],
            r["metadata"],
            f"{r['threshold']:.3f}",
            f"{r['mcc']:+.3f}",
            f"{r['accuracy']:.3f}",
            f"{r['precision']:.3f}",
            f"{r['recall']:.3f}",
            f"{r['f1']:.3f}",
            "-" if math.isnan(r["auc"]) else f"{r['auc']:.3f}",
            f"{r['reward']:.3f}",
            str(r["n"]),
        )
    return table


NO_MASK_MODEL = "head-nomask"  # the head trained again without the mask losses


def mask_loss_table(rows: list[dict[str, Any]], random_init: bool) -> Table:
    """MCC of the head with the mask losses beside the same head trained without them,
    metadata-free (what a validator sends), per set, variant group and threshold."""
    title = "train-head: MCC with and without the mask loss (metadata none)"
    if random_init:
        title += "\n[yellow]random backbone weights: this measures the machinery, not quality"
    table = Table(title=title)
    for col in ("set", "variant", "thr", "with mask loss", "without", "difference"):
        table.add_column(col, justify="left" if col in ("set", "variant", "thr") else "right")
    index = {
        (r["model"], r["set"], r["variant"], r["threshold_kind"]): r
        for r in rows
        if r["metadata"] == "none"
    }
    for model, set_name, variant, kind in index:
        other = index.get((NO_MASK_MODEL, set_name, variant, kind))
        if model != "head" or other is None:
            continue
        with_mcc, without = index[(model, set_name, variant, kind)]["mcc"], other["mcc"]
        table.add_row(
            set_name,
            variant,
            kind,
            f"{with_mcc:+.3f}",
            f"{without:+.3f}",
            f"{with_mcc - without:+.3f}",
        )
    return table


def extract_table(summary: ExtractSummary) -> Table:
    table = Table(title=f"extract: {summary.cache}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("rows", str(summary.rows))
    table.add_row(
        "shards written now / total", f"{summary.shards_done_now} / {summary.shards_total}"
    )
    table.add_row("ok", str(summary.ok))
    table.add_row("errors", str(summary.errors))
    for reason, count in summary.error_reasons.most_common(5):
        table.add_row(f"  {reason}", str(count))
    table.add_row("variants", ", ".join(summary.variants))
    table.add_row("seconds", f"{summary.seconds:.1f}")
    table.add_row("images / s (all variants)", f"{summary.images_per_s:.2f}")
    if summary.random_init:
        table.add_row("[yellow]backbone", "[yellow]random weights (tiny preset)")
    if summary.masks:
        m = summary.masks
        grid = m["grid"]
        table.add_row("masks", f"{m['source']}, {grid}x{grid} grid per view, {m['dtype']}")
        table.add_row("rows with a mask", f"{summary.mask_rows} / {summary.rows}")
        for reason, count in summary.mask_reasons.most_common(5):
            table.add_row(f"  no mask: {reason}", str(count))
        table.add_row("mask seconds (this run)", f"{summary.mask_seconds:.1f}")
    return table


def ensemble_table(rows: list[dict[str, Any]], random_init: bool, target_name: str | None) -> Table:
    title = (
        "ensemble: MCC / accuracy / reward (metadata 'none' is what a validator sends; "
        "'natix' pools the natix-* levels)"
    )
    if target_name:
        title += f"\ntarget = {target_name}, every model's threshold cross-fitted on its folds"
    if random_init:
        title += "\n[yellow]random backbone weights: this measures the machinery, not quality"
    table = Table(title=title)
    for col in ("model", "set", "metadata"):
        table.add_column(col)
    for col in ("clean MCC", "acc", "reward", "natix MCC", "acc ", "reward ", "n"):
        table.add_column(col, justify="right")
    index = {(r["model"], r["set"], r["metadata"], r["variant"]): r for r in rows}
    seen = []
    for r in rows:
        k = (r["model"], r["set"], r["metadata"])
        if k not in seen:
            seen.append(k)
    order = {"oof": 0, "test": 1, "target": 2}
    for model, set_name, meta in sorted(seen, key=lambda k: order.get(k[1], 9)):
        cells = []
        for variant in ("clean", "natix"):
            r = index.get((model, set_name, meta, variant))
            cells += (
                [f"{r['mcc']:+.3f}", f"{r['accuracy']:.3f}", f"{r['reward']:.3f}"]
                if r
                else ["-", "-", "-"]
            )
        n = index.get((model, set_name, meta, "clean"), {}).get("n", "-")
        table.add_row(model, set_name, meta, *cells, str(n))
    return table


METHOD_NAMES = {"none": "no TTA (clean)", "mean": "mean-TTA", "foods": "FOODS"}


def tta_table(rows: list[dict[str, Any]], split: str, random_init: bool) -> Table:
    title = f"tta: split {split}, metadata-free, cut at 0.5 (threshold folded)"
    if random_init:
        title += "\n[yellow]random backbone weights: this measures the machinery, not quality"
    table = Table(title=title)
    for col in ("method", "MCC", "acc", "reward", "AUC", "n"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(
            METHOD_NAMES[r["method"]],
            f"{r['mcc']:+.3f}",
            f"{r['accuracy']:.3f}",
            f"{r['reward']:.3f}",
            "-" if math.isnan(r["auc"]) else f"{r['auc']:.3f}",
            str(r["n"]),
        )
    return table


def variant_table(summary: list[dict[str, Any]]) -> Table:
    table = Table(title="FOODS by variant (mean over images)")
    for col in ("variant", "distance", "kept", "weight"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for s in summary:
        table.add_row(
            s["variant"],
            f"{s['mean_distance']:.2f}",
            f"{s['kept_share']:.0%}",
            f"{s['mean_weight']:.3f}",
        )
    return table


@dataclass
class ExtractSummary:
    cache: Path
    rows: int
    shards_total: int
    shards_done_now: int
    ok: int = 0
    errors: int = 0
    error_reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    images_per_s: float = 0.0
    random_init: bool = False
    variants: list[str] = field(default_factory=list)
    masks: dict[str, Any] | None = None  # the cache's mask record, when it has masks
    mask_rows: int = 0  # rows with a mask
    mask_reasons: Counter = field(default_factory=Counter)  # this run: why rows have none
    mask_seconds: float = 0.0


def answers_table(answers: list[Answer], predictor: Predictor) -> Table:
    title = f"predict: {predictor.model} (0.5 is the cut; TTA: {predictor.combine})"
    if predictor.backbone.info.get("random_init"):
        title += "\n[yellow]random backbone weights: a demonstration of the machinery"
    table = Table(title=title)
    table.add_column("image")
    table.add_column("probability", justify="right")
    table.add_column("answer")
    table.add_column("error")
    for a in answers:
        if a.error:
            table.add_row(a.path, "-", "[red]error", a.error)
        else:
            table.add_row(
                a.path, f"{a.probability:.4f}", "roadwork" if a.roadwork else "no roadwork", ""
            )
    return table


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
    masks = info.get("masks")
    if masks:
        grid = masks["grid"]
        table.add_row(
            "masks",
            f"{masks['source']}, {grid}x{grid} grid per view, {masks['dtype']}; "
            f"{info.get('mask_rows', '-')} rows with a mask",
        )
        if masks.get("prompts"):
            table.add_row("", f"[dim]prompts: {', '.join(masks['prompts'])}")
        if masks.get("segmenter"):
            seg = masks["segmenter"]
            table.add_row(
                "", f"[dim]segmenter {seg.get('path')} sha256 {str(seg.get('weights_sha256'))[:12]}"
            )
    table.add_row("source", str(info.get("source")))
    table.add_row("created", f"{info.get('created')} by roadwork-cache {info.get('tool_version')}")
    return table

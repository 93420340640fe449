"""The summary table every command prints at its end (rich Tables), and the small summary
records of extract and export."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from roadwork_cache.inference.predictor import Answer, Predictor


def _f(value: Any, spec: str = "+.3f") -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (format(value, spec))
    )


def train_head_table(
    rows: list[dict[str, Any]], lead: dict[str, dict | None], random_init: bool
) -> Table:
    """The deployment headline of the head beside the two linear probes: natix challenges
    (clean when the cache has none), no metadata, labels 50/50, the deployed output cut at
    0.5, and the simulated validator reward. The full table is in metrics.json."""
    group = next((r["variant"] for r in (lead.get("head"),) if r), "natix")
    title = (
        f"train-head: as deployed ({group} challenges, no metadata, labels 50/50, cut "
        "0.5); full table in metrics.json and `roadwork report`"
    )
    if random_init:
        title += "\n[yellow]random backbone weights: this measures the machinery, not quality"
    table = Table(title=title)
    table.add_column("model")
    for col in ("val MCC", "MCC", "acc", "AUC", "reward", "reward p5", "clean MCC", "set", "n"):
        table.add_column(col, justify="right")
    index = {
        (r["model"], r["set"], r["variant"], r["metadata"], r["threshold_kind"]): r for r in rows
    }
    for model, top in lead.items():
        if top is None:
            continue
        val = index.get((model, "val", top["variant"], "none", "tuned"), {})
        clean = index.get((model, top["set"], "clean", "none", "tuned"), {})
        reward = top["expected_reward"]
        table.add_row(
            model,
            _f(val.get("mcc")),
            _f(top["mcc"]),
            _f(top["accuracy"], ".3f"),
            _f(top["auc"], ".3f"),
            _f(reward["mean"], ".3f"),
            _f(reward["p5"], ".3f"),
            _f(clean.get("mcc")),
            top["set"],
            str(top["n"]),
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


def ensemble_table(
    rows: list[dict[str, Any]],
    rewards: dict[str, dict[str, Any]],
    random_init: bool,
    target_name: str | None,
) -> Table:
    """Every member and combination, and the deployed bundle, as a validator would see them:
    no metadata, labels 50/50, cut at 0.5; the OOF and target rows at cross-fitted cuts. The
    rows with metadata are in metrics.json."""
    title = (
        "ensemble: no metadata, labels 50/50, cut at 0.5 ('natix' pools the levels equally; "
        "oof and target rows cross-fitted; 'deployed' is the saved bundle)"
    )
    if target_name:
        title += f"\ntarget = {target_name}"
    if random_init:
        title += "\n[yellow]random backbone weights: this measures the machinery, not quality"
    table = Table(title=title)
    for col in ("model", "set"):
        table.add_column(col)
    for col in ("natix MCC", "natix acc", "clean MCC", "reward", "reward p5", "n"):
        table.add_column(col, justify="right")
    index = {(r["model"], r["set"], r["variant"]): r for r in rows if r["metadata"] == "none"}
    keys = list(dict.fromkeys((r["model"], r["set"]) for r in rows))
    order = {"oof": 0, "test": 1, "target": 2}
    for model, set_name in sorted(keys, key=lambda k: order.get(k[1], 9)):
        natix = index.get((model, set_name, "natix"), {})
        clean = index.get((model, set_name, "clean"), {})
        reward = rewards.get(model, {}).get(set_name, {})
        table.add_row(
            model,
            set_name,
            _f(natix.get("mcc")),
            _f(natix.get("accuracy"), ".3f"),
            _f(clean.get("mcc")),
            _f(reward.get("mean"), ".3f"),
            _f(reward.get("p5"), ".3f"),
            str(clean.get("n", natix.get("n", "-"))),
        )
    return table


METHOD_NAMES = {"none": "no TTA (clean)", "mean": "mean-TTA", "foods": "FOODS"}


def tta_table(
    rows: list[dict[str, Any]],
    rewards: dict[str, Any],
    split: str,
    random_init: bool,
    in_sample: bool = False,
    challenges: bool = False,
) -> Table:
    on = "natix challenges, levels equal" if challenges else "the full image (no challenges)"
    title = f"tta: split {split}, on {on}, no metadata, labels 50/50, cut at 0.5 (folded)"
    if in_sample:
        title += "\n[bold red]in-sample: the model saw these rows' labels; not a held-out score"
    if random_init:
        title += "\n[yellow]random backbone weights: this measures the machinery, not quality"
    table = Table(title=title)
    for col in ("method", "MCC", "acc", "reward", "reward p5", "AUC", "n"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        reward = rewards.get(r["method"], {})
        table.add_row(
            METHOD_NAMES[r["method"]],
            _f(r["mcc"]),
            _f(r["accuracy"], ".3f"),
            _f(reward.get("mean"), ".3f"),
            _f(reward.get("p5"), ".3f"),
            _f(r["auc"], ".3f"),
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


@dataclass
class ExportSummary:
    out: Path
    config: Any  # inference.export_format.ExportConfig
    card: dict[str, Any]
    sizes: dict[str, int]  # file -> bytes
    max_diff: float | None  # detector.py against the predict path; None: not verified
    has_metrics: bool
    notes: list[str] = field(default_factory=list)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def export_table(summary: ExportSummary) -> Table:
    c = summary.config
    table = Table(title=f"export: {summary.out} (a Hugging Face model repository)")
    table.add_column("what")
    table.add_column("value")
    b = c.backbone
    table.add_row(
        "backbone",
        f"{b.get('preset')} from {b.get('format')} weights -> timm {b['timm'].get('model_name')}, "
        f"{b['feature_dim']}-d {b['pool']}, views {c.views['view_size']} px",
    )
    heads = f"{len(c.heads)} head(s)"
    if c.kind == "ensemble":
        heads += f" in {len(c.members or [])} members, {c.combination.get('method')} combination"
    table.add_row("model", f"{c.kind}: {heads}; threshold {c.threshold:.4f} folded (0.5 cuts)")
    tta = c.tta
    table.add_row(
        "TTA",
        f"{'on' if tta.get('enabled') else 'off'} by default; {len(tta['variants'])} variants, "
        + ("FOODS" if tta["combine"] == "foods" else "mean"),
    )
    for name, size in summary.sizes.items():
        table.add_row(f"  {name}", f"{_megabytes(size)}  sha256 {c.files[name][:12]}")
    for key in ("model_name", "version", "submitted_by"):
        value = summary.card.get(key) or "[yellow](empty: set --hotkey before uploading)"
        table.add_row(f"model_card {key}", str(value))
    table.add_row(
        "README metrics", "from metrics.json" if summary.has_metrics else "[yellow]none recorded"
    )
    table.add_row(
        "detector.py vs predict",
        "not verified (--no-verify)"
        if summary.max_diff is None
        else f"max |difference| {summary.max_diff:.1e} on sample challenges",
    )
    if b.get("random_init"):
        table.add_row("[yellow]backbone", "[yellow]random weights (tiny preset): tests only")
    table.add_row("next", f"roadwork export --check {summary.out}")
    return table


@dataclass
class CheckSummary:
    folder: Path
    card: dict[str, Any]
    describe: dict[str, Any]  # the detector's device, dtype, variants, combine, heads
    runs: int
    p50_ms: float
    p95_ms: float
    probabilities: tuple[float, float]
    within_timeout: bool
    versions: dict[str, str]


def check_table(summary: CheckSummary) -> Table:
    d = summary.describe
    table = Table(title=f"export --check: {summary.folder}")
    table.add_column("what")
    table.add_column("value")
    table.add_row("files", "all present, sha256 as recorded")
    table.add_row("model card", f"{summary.card.get('model_name')} {summary.card.get('version')}")
    device = d["device"] + (f" ({d['gpu']})" if d.get("gpu") else "")
    table.add_row("device", device)
    table.add_row("dtype", d["dtype"])
    table.add_row("model", f"{d['kind']}, {d['heads']} head(s)")
    table.add_row("variants", f"{len(d['variants'])} ({', '.join(d['variants'])}), {d['combine']}")
    table.add_row(
        "latency", f"p50 {summary.p50_ms:.1f} ms, p95 {summary.p95_ms:.1f} ms ({summary.runs} runs)"
    )
    lo, hi = summary.probabilities
    table.add_row("probabilities", f"{lo:.4f} .. {hi:.4f} on 224 px challenge-like JPEGs")
    table.add_row(
        "subnet's 9 s limit",
        "every run within it" if summary.within_timeout else "[red]exceeded: turn TTA off",
    )
    table.add_row("versions", ", ".join(f"{k} {v}" for k, v in summary.versions.items()))
    return table

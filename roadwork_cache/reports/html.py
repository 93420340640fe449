"""The self-contained HTML page of `roadwork report`: its sections, rendered from a run folder
and the analysis (no external files, figures inline)."""

from __future__ import annotations

import datetime as dt
import math
from html import escape
from typing import Any

from matplotlib.figure import Figure

from roadwork_cache.inference.run_folder import RunFolder
from roadwork_cache.reports.analysis import (
    GROUP_FIELDS,
    MIN_GROUP_ROWS,
    PROB_COLUMN,
    SetData,
    gps_groups,
    hardest_errors,
    score_groups,
    tag_groups,
)
from roadwork_cache.reports.figures import (
    confusion_figure,
    group_figure,
    histogram_figure,
    learning_figure,
    png_uri,
    reliability_figure,
)

RANDOM_WEIGHTS_TEXT = (
    "This run's cache was made with a randomly initialised backbone: "
    "scores demonstrate the machinery, not quality."
)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
tr.deploy { background: #eef6ff; } tr.leaky { background: #fff0f0; }
.banner { background: #fff3a0; border: 2px solid #e0c000; padding: 0.8em; font-weight: bold; }
.note { background: #f4f4f4; border-left: 4px solid #999; padding: 0.5em 0.8em; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.groups { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
"""


def fmt(value: Any, spec: str = ".3f") -> str:
    """A number formatted, '-' for None / NaN, anything else as text (escaped later)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)  # ints (counts, epochs) print as they are
    return format(value, spec)


def table_html(
    headers: list[str],
    rows: list[list[str]],
    row_classes: list[str] | None = None,
    table_id: str | None = None,
    text_columns: int = 0,
) -> str:
    """An HTML table; every cell is escaped. The first `text_columns` columns align left."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{escape(row_classes[i])}"' if row_classes and row_classes[i] else ""
        cells = "".join(
            f'<td class="text">{escape(c)}</td>' if j < text_columns else f"<td>{escape(c)}</td>"
            for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return f"<table{ident}><tr>{head}</tr>{''.join(body)}</table>"


def img_html(fig: Figure, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="{png_uri(fig)}">'


def metrics_section(run: RunFolder) -> str:
    headers = [
        "model",
        "set",
        "variant",
        "metadata",
        "threshold",
        "thr",
        "MCC",
        "acc",
        "prec",
        "rec",
        "F1",
        "AUC",
        "reward",
        "n",
    ]
    rows, classes = [], []
    for r in run.metrics.get("rows", []):
        rows.append(
            [
                fmt(r.get("model")),
                fmt(r.get("set")),
                fmt(r.get("variant")),
                fmt(r.get("metadata")),
                fmt(r.get("threshold_kind")),
                fmt(r.get("threshold")),
                fmt(r.get("mcc"), "+.3f"),
                fmt(r.get("accuracy")),
                fmt(r.get("precision")),
                fmt(r.get("recall")),
                fmt(r.get("f1")),
                fmt(r.get("auc")),
                fmt(r.get("reward")),
                fmt(r.get("n")),
            ]
        )
        classes.append("deploy" if r.get("metadata") == "none" else "")
    return (
        "<h2>Metrics (metrics.json)</h2><p>Highlighted rows have every metadata field NULL: "
        "that is what a validator sends.</p>"
        + table_html(headers, rows, classes, "metrics", text_columns=5)
    )


def audit_section(run: RunFolder) -> str:
    headers = ["field", "present", "MCC present", "best value", "MCC value", "leaky"]
    rows, classes = [], []
    for a in run.audit:
        rows.append(
            [
                fmt(a.get("field")),
                fmt(a.get("present_rate"), ".1%"),
                fmt(a.get("mcc_present"), "+.3f"),
                fmt(a.get("best_value")),
                fmt(a.get("mcc_value"), "+.3f"),
                "LEAKY" if a.get("leaky") else "no",
            ]
        )
        classes.append("leaky" if a.get("leaky") else "")
    leaky = ", ".join(run.config.get("leaky_fields") or []) or "none"
    kept = (
        "kept as head inputs (--allow-leaky-metadata)"
        if run.config.get("allow_leaky_metadata")
        else "those among the head's inputs were dropped"
    )
    body = (
        table_html(headers, rows, classes, "audit", text_columns=1)
        if rows
        else '<p class="note">The run folder has no audit.json.</p>'
    )
    return (
        f"<h2>Metadata leakage audit (audit.json)</h2><p>Leaky fields: {escape(leaky)}; "
        f"{escape(kept)}.</p>{body}"
    )


def groups_section(
    data: SetData, samples: dict[str, dict[str, Any]] | None, why: str, run: RunFolder
) -> str:
    title = "<h2>MCC per group</h2>"
    if samples is None:
        return (
            f'{title}<p class="note">Per-field breakdowns (weather, daytime, scene, city, '
            f"GPS cluster) are unavailable: {escape(why)}.</p>"
        )
    rows = [samples.get(i, {}) for i in data.ids]
    unmatched = sum(1 for i in data.ids if i not in samples)
    gps, how = gps_groups(rows, (run.config.get("gps") or {}).get("centres"))
    fields = [(f, tag_groups(rows, f)) for f in GROUP_FIELDS] + [("GPS cluster", gps)]
    parts = [
        title,
        f"<p>MCC of the metadata-free head at the tuned threshold "
        f"{run.threshold:.3f} on the {escape(data.name)} set. Groups with fewer than "
        f"{MIN_GROUP_ROWS} rows or a single class show n/a (MCC is undefined there, not 0). "
        "A row with several weather tags counts in each. GPS cluster: "
        f"{escape(how)}.</p>",
    ]
    if unmatched:
        parts.append(
            f'<p class="note">{unmatched} row(s) of the set are not in the cache '
            "(it was re-made?); they count as (missing).</p>"
        )
    parts.append('<div class="groups">')
    for field, groups in fields:
        scores = score_groups(groups, data.labels, data.prob, run.threshold)
        table = table_html(
            ["group", "rows", "roadwork", "MCC"],
            [[s.name, str(s.n), str(s.positives), fmt(s.mcc, "+.3f")] for s in scores],
            table_id=f"groups-{field.replace(' ', '-')}",
            text_columns=1,
        )
        parts.append(
            f"<div>{img_html(group_figure(field, scores), f'MCC per {field}')}{table}</div>"
        )
    parts.append("</div>")
    return "".join(parts)


def errors_section(
    data: SetData, samples: dict[str, dict[str, Any]] | None, threshold: float
) -> str:
    idx = hardest_errors(data, threshold)
    intro = (
        f"<h2>Hardest errors</h2><p>Rows of the {escape(data.name)} set misclassified at "
        f"the tuned threshold {threshold:.3f}, largest |prob - label| first "
        f"({len(idx)} shown).</p>"
    )
    if not idx:
        return intro + '<p class="note">No errors on this set.</p>'
    rows = []
    for i in idx:
        meta = (samples or {}).get(data.ids[i])
        if meta is None:
            city = weather = source = "unavailable"
        else:
            city = fmt(meta.get("city"))
            weather = ", ".join(meta.get("weather") or []) or "-"
            source = fmt(meta.get("source"))
        rows.append(
            [data.ids[i], str(data.labels[i]), f"{data.prob[i]:.4f}", city, weather, source]
        )
    table = table_html(
        ["id", "label", "prob", "city", "weather", "source"],
        rows,
        table_id="hardest",
        text_columns=1,
    )
    return intro + table


def summary_section(run: RunFolder, data: SetData) -> str:
    cfg = run.config
    backbone = cfg.get("backbone") or {}
    head = cfg.get("head") or {}
    items = [
        ("run folder", str(run.root.resolve())),
        ("created", fmt(cfg.get("created"))),
        ("tool version", fmt(cfg.get("tool_version"))),
        ("cache", fmt(cfg.get("cache"))),
        (
            "backbone",
            f"{fmt(backbone.get('preset'))} (random weights: {'yes' if run.random_init else 'no'})",
        ),
        ("head metadata fields", ", ".join(head.get("meta_fields") or []) or "none"),
        ("training variants", ", ".join(cfg.get("variants") or [])),
        (
            "best epoch",
            f"{fmt(run.metrics.get('best_epoch'))} (val MCC "
            f"{fmt(run.metrics.get('best_val_mcc'), '+.3f')})",
        ),
        (
            "tuned threshold",
            f"{run.threshold:.4f} (MCC-best on validation in the selection "
            "setting: natix levels equal, no metadata, labels 50/50)",
        ),
        (
            "set analysed",
            f"{data.name}: {len(data.labels)} labelled rows, {int(data.labels.sum())} roadwork",
        ),
        ("probability", f"{PROB_COLUMN}: the head on clean views with every metadata field NULL"),
    ]
    rows = "".join(
        f'<tr><th>{escape(k)}</th><td class="text">{escape(v)}</td></tr>' for k, v in items
    )
    return f"<table>{rows}</table>"


def headline_section(run: RunFolder, data: SetData) -> str:
    """What a validator would see: the deployed output on natix challenges (clean when the
    cache has none), no metadata, labels 50/50, and the simulated reward; beside the probes."""
    lead = run.metrics.get("headline") or {}
    head = lead.get("head")
    if not head:
        return '<p class="note">metrics.json has no deployment headline (an older run).</p>'
    reward = head.get("expected_reward") or {}
    items = [
        f"MCC {fmt(head.get('mcc'), '+.3f')}",
        f"accuracy {fmt(head.get('accuracy'))}",
        f"expected validator reward {fmt(reward.get('mean'))} (5th percentile "
        f"{fmt(reward.get('p5'))})",
    ]
    others = [
        f"{name}: MCC {fmt(r.get('mcc'), '+.3f')}, reward "
        f"{fmt((r.get('expected_reward') or {}).get('mean'))}"
        for name, r in lead.items()
        if name != "head" and r
    ]
    held = (
        "held-out rows"
        if head.get("set") == "test"
        else "validation rows, which chose the epoch and the threshold: not a held-out score"
    )
    note = ""
    if data.name == "val":
        note = (
            '<p class="banner">The analysis below is on the validation rows, which chose '
            "the epoch and the threshold: it is in-sample, not a held-out score.</p>"
        )
    return (
        f'<div class="headline"><h2>As deployed</h2><p><b>{escape(", ".join(items))}</b> on the '
        f"{escape(str(head.get('set')))} set's {escape(str(head.get('variant')))} challenges "
        f"({escape(held)}), every metadata field NULL, labels weighed 50/50, cut at 0.5."
        f"</p><p>Linear probes: {escape('; '.join(others) or 'none')}.</p></div>{note}"
    )


def render_page(
    run: RunFolder, data: SetData, samples: dict[str, dict[str, Any]] | None, why: str
) -> str:
    thresholds = [(f"tuned threshold {run.threshold:.3f}", run.threshold), ("threshold 0.5", 0.5)]
    parts = [f"<h1>roadwork report: {escape(run.root.name)} ({escape(data.name)} set)</h1>"]
    if run.random_init:
        parts.append(f'<p class="banner">{escape(RANDOM_WEIGHTS_TEXT)}</p>')
    if samples is None:
        parts.append(
            f'<p class="note">Cache unavailable: {escape(why)}. This page is built '
            "from the run folder alone; per-field breakdowns are unavailable.</p>"
        )
    parts.append(headline_section(run, data))
    parts.append(summary_section(run, data))
    parts.append(metrics_section(run))
    parts.append(
        "<h2>Confusion matrices (no metadata)</h2>"
        + img_html(confusion_figure(data, thresholds), "confusion matrices")
    )
    parts.append(groups_section(data, samples, why, run))
    fig, ece = reliability_figure(data)
    parts.append(
        f"<h2>Calibration</h2><p>Expected calibration error {ece:.3f}. The threshold "
        "is folded into deployed outputs; these are the raw probabilities.</p>"
        + img_html(fig, "reliability diagram")
        + img_html(histogram_figure(data, thresholds), "score histogram")
    )
    curves = learning_figure(run.metrics.get("history") or [], run.metrics.get("best_epoch"))
    parts.append(
        "<h2>Learning curves</h2>"
        + (
            img_html(curves, "learning curves")
            if curves is not None
            else '<p class="note">metrics.json has no training history.</p>'
        )
    )
    parts.append(errors_section(data, samples, run.threshold))
    parts.append(audit_section(run))
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    parts.append(f"<p><small>written {escape(stamp)} by roadwork report</small></p>")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>roadwork report: {escape(run.root.name)}</title><style>{STYLE}</style>"
        f"</head><body>{''.join(parts)}</body></html>\n"
    )

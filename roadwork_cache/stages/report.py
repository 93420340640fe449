"""`roadwork report`: one self-contained HTML page about a `roadwork train-head` run.

Read top to bottom: load the run folder (config, metrics, audit, predictions), pick the set
to look at, join the cache's per-row metadata when the cache still exists, score groups, draw
the plots (matplotlib, no pyplot state) as base64 PNG data URIs, and assemble the page. The
page analyses the head's metadata-free probability on the clean views: that is what a
validator's image gets. Every string that comes from data goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
import warnings
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.metrics import binary_metrics, decisions
from roadwork_cache.training.sampler import haversine_km, target_centres

PROB_COLUMN = "head_clean_none"  # clean views, every metadata field NULL: the deployment case
SETS = ("test", "val")
MIN_GROUP_ROWS = 5  # below this an MCC is noise; shown as n/a
MAX_BARS = 30  # a plot of more groups is unreadable; the table below it lists them all
N_HARDEST = 20
RELIABILITY_BINS = 10
DPI = 80
GROUP_FIELDS = ("weather", "daytime", "scene", "city")
MISSING = "(missing)"
NO_GPS = "no GPS"
CLASS_NAMES = ("no roadwork (0)", "roadwork (1)")
RANDOM_WEIGHTS_TEXT = (
    "This run's cache was made with a randomly initialised backbone: "
    "scores demonstrate the machinery, not quality."
)


# ---- the run folder ---------------------------------------------------------------------------


@dataclass
class Run:
    root: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    audit: list[dict[str, Any]]
    predictions: dict[str, list[Any]]

    @property
    def threshold(self) -> float:
        """The validation-tuned MCC-best threshold of the head (the deployed cut)."""
        return float(self.config.get("threshold", self.metrics.get("threshold", 0.5)))

    @property
    def random_init(self) -> bool:
        backbone = self.config.get("backbone") or {}
        return bool(backbone.get("random_init") or self.metrics.get("random_init_backbone"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def load_run(root: Path) -> Run:
    """Read a run folder, refusing anything that is not a finished train-head run."""
    if not root.is_dir():
        raise UserError(f"run folder {root} does not exist")
    needed = ("config.json", "metrics.json", "predictions.parquet")
    missing = [name for name in needed if not (root / name).is_file()]
    if missing:
        raise UserError(f"{root} is not a train-head run folder (it has no {', '.join(missing)})")
    config = read_json(root / "config.json")
    if not isinstance(config, dict) or config.get("kind") != "train-head":
        raise UserError(f"{root / 'config.json'} was not written by `roadwork train-head`")
    metrics = read_json(root / "metrics.json")
    if not isinstance(metrics, dict):
        raise UserError(f"{root / 'metrics.json'} is not a train-head metrics file")
    audit = read_json(root / "audit.json") if (root / "audit.json").is_file() else []
    try:
        predictions = pq.read_table(root / "predictions.parquet").to_pydict()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(f"cannot read {root / 'predictions.parquet'}: {exc}") from None
    if not {"id", "set", "label", PROB_COLUMN} <= set(predictions):
        raise UserError(
            f"{root / 'predictions.parquet'} lacks the columns id, set, label and {PROB_COLUMN}"
        )
    return Run(root, config, metrics, audit if isinstance(audit, list) else [], predictions)


@dataclass
class SetData:
    """The labelled rows of one evaluation set, in predictions order."""

    name: str
    ids: list[str]
    labels: np.ndarray
    prob: np.ndarray


def labelled_rows(run: Run, set_name: str) -> list[int]:
    preds = run.predictions
    return [
        i
        for i, (s, y) in enumerate(zip(preds["set"], preds["label"], strict=True))
        if s == set_name and y is not None
    ]


def choose_set(run: Run, asked: str | None) -> SetData:
    """The asked set, else 'test' when it has labelled rows, else 'val'."""
    if asked is not None and asked not in SETS:
        raise UserError(f"--set must be one of {', '.join(SETS)}, not {asked!r}")
    name = asked or ("test" if labelled_rows(run, "test") else "val")
    rows = labelled_rows(run, name)
    if not rows:
        raise UserError(f"run {run.root} has no labelled rows in its {name!r} set")
    preds = run.predictions
    return SetData(
        name=name,
        ids=[str(preds["id"][i]) for i in rows],
        labels=np.array([int(preds["label"][i]) for i in rows], dtype=np.int64),
        prob=np.array([preds[PROB_COLUMN][i] for i in rows], dtype=np.float64),
    )


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


# ---- per-group scores -------------------------------------------------------------------------


@dataclass
class GroupScore:
    name: str
    n: int
    positives: int
    mcc: float | None  # None: fewer than MIN_GROUP_ROWS rows or one class, MCC says nothing


def tag_groups(rows: list[dict[str, Any]], field: str) -> list[list[str]]:
    """Group names per row; a row with several weather tags belongs to each of them."""
    groups = []
    for row in rows:
        value = row.get(field)
        values = value if isinstance(value, list | tuple) else [value]
        names = [str(v) for v in values if v not in (None, "")]
        groups.append(names or [MISSING])
    return groups


def gps_groups(rows: list[dict[str, Any]], centres: Any) -> tuple[list[list[str]], str]:
    """Nearest centre per row (the run's GPS target centres, else k-means of this set's GPS);
    rows without GPS form their own group. Returns the groups and how centres were chosen."""
    lat = np.array([np.nan if r.get("gps_lat") is None else r["gps_lat"] for r in rows], float)
    lon = np.array([np.nan if r.get("gps_lon") is None else r["gps_lon"] for r in rows], float)
    ok = np.isfinite(lat) & np.isfinite(lon)
    if centres:
        how = "nearest of the run's GPS target centres (config.json)"
        centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    elif ok.any():
        how = "nearest k-means (k = 5) centre of this set's GPS (the run recorded no centres)"
        with warnings.catch_warnings():  # fewer than 5 distinct points is fine here
            warnings.simplefilter("ignore")
            centres = target_centres(lat[ok], lon[ok], k=5, seed=0)
    else:
        return [[NO_GPS] for _ in rows], "no row of this set has GPS"
    names = [f"C{i + 1} ({c[0]:.2f}, {c[1]:.2f})" for i, c in enumerate(centres)]
    nearest = np.zeros(len(rows), dtype=np.int64)
    if ok.any():
        dist = haversine_km(lat[ok, None], lon[ok, None], centres[None, :, 0], centres[None, :, 1])
        nearest[ok] = dist.argmin(axis=1)
    return [[names[k]] if has else [NO_GPS] for k, has in zip(nearest, ok, strict=True)], how


def score_groups(
    groups: list[list[str]], labels: np.ndarray, prob: np.ndarray, threshold: float
) -> list[GroupScore]:
    """MCC per group at the threshold; largest groups first, missing / no-GPS last."""
    members: dict[str, list[int]] = {}
    for i, names in enumerate(groups):
        for name in names:
            members.setdefault(name, []).append(i)
    scores = []
    for name, idx in members.items():
        y = labels[idx]
        defined = len(idx) >= MIN_GROUP_ROWS and 0 < y.sum() < len(y)
        mcc = binary_metrics(y, prob[idx], threshold)["mcc"] if defined else None
        scores.append(GroupScore(name, len(idx), int(y.sum()), mcc))
    return sorted(scores, key=lambda s: (s.name in (MISSING, NO_GPS), -s.n, s.name))


def hardest_errors(data: SetData, threshold: float) -> list[int]:
    """Indices of rows misclassified at the threshold, most confidently wrong first."""
    wrong = np.flatnonzero(decisions(data.prob, threshold) != data.labels)
    distance = np.abs(data.prob[wrong] - data.labels[wrong])
    return wrong[np.argsort(-distance, kind="stable")][:N_HARDEST].tolist()


# ---- plots ------------------------------------------------------------------------------------


def png_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plain(text: str) -> str:
    """Matplotlib reads $...$ as maths; a city name must stay text."""
    return text.replace("$", r"\$")


def confusion_figure(data: SetData, thresholds: list[tuple[str, float]]) -> Figure:
    fig = Figure(figsize=(3.6 * len(thresholds), 3.3), layout="constrained")
    for ax, (name, t) in zip(fig.subplots(1, len(thresholds)), thresholds, strict=True):
        pred = decisions(data.prob, t)
        cm = np.array([[np.sum((data.labels == a) & (pred == b)) for b in (0, 1)] for a in (0, 1)])
        ax.imshow(cm, cmap="Blues", vmin=0)
        for (a, b), v in np.ndenumerate(cm):
            ax.text(
                b,
                a,
                str(v),
                ha="center",
                va="center",
                color="white" if v > cm.max() / 2 else "black",
                fontsize=13,
            )
        ax.set_xticks([0, 1], CLASS_NAMES, fontsize=8)
        ax.set_yticks([0, 1], CLASS_NAMES, fontsize=8, rotation=90, va="center")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        mcc = binary_metrics(data.labels, data.prob, t)["mcc"]
        ax.set_title(f"{name}: MCC {mcc:+.3f}", fontsize=10)
    return fig


def group_figure(field: str, scores: list[GroupScore]) -> Figure:
    shown = scores[:MAX_BARS]
    fig = Figure(figsize=(6.5, 1.0 + 0.3 * len(shown)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(shown))
    ax.barh(
        y,
        [s.mcc or 0.0 for s in shown],
        color=["tab:blue" if s.mcc is not None else "none" for s in shown],
    )
    for yi, s in zip(y, shown, strict=True):
        text = "n/a" if s.mcc is None else f"{s.mcc:+.2f}"
        x = 0.02 if s.mcc is None or s.mcc < 0 else s.mcc + 0.02
        ax.text(x, yi, text, va="center", fontsize=8, color="grey" if s.mcc is None else "black")
    ax.set_yticks(y, [plain(f"{s.name} (n={s.n})") for s in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-1, 1)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("MCC at the tuned threshold")
    ax.set_title(f"MCC per {field}", fontsize=10)
    return fig


def reliability(data: SetData) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per-bin mean probability, share of roadwork and count (10 equal bins), and the ECE."""
    edges = np.linspace(0.0, 1.0, RELIABILITY_BINS + 1)
    which = np.clip(np.digitize(data.prob, edges[1:-1]), 0, RELIABILITY_BINS - 1)
    count = np.bincount(which, minlength=RELIABILITY_BINS).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(which, data.prob, RELIABILITY_BINS) / count
        share = np.bincount(which, data.labels.astype(np.float64), RELIABILITY_BINS) / count
    used = count > 0
    ece = float(np.sum(count[used] / count.sum() * np.abs(share[used] - mean_p[used])))
    return mean_p, share, count, ece


def reliability_figure(data: SetData) -> tuple[Figure, float]:
    mean_p, share, count, ece = reliability(data)
    fig = Figure(figsize=(4.6, 4.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    used = count > 0
    top.plot(mean_p[used], share[used], marker="o", label="head (no metadata)")
    top.set_ylabel("share of roadwork")
    top.set_ylim(0, 1)
    top.legend(fontsize=8)
    top.set_title(f"reliability, {RELIABILITY_BINS} bins (ECE {ece:.3f})", fontsize=10)
    bottom.bar(np.linspace(0.05, 0.95, RELIABILITY_BINS), count, width=0.09, color="tab:grey")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("rows")
    return fig, ece


def histogram_figure(data: SetData, thresholds: list[tuple[str, float]]) -> Figure:
    # Bins follow the scores, not [0, 1]: a head whose scores sit in [0.50, 0.52] would be one
    # spike. A threshold outside the scores is named in the title instead of drawn.
    lo, hi = float(data.prob.min()), float(data.prob.max())
    pad = max(hi - lo, 1e-3) * 0.03
    edges = np.linspace(lo - pad, hi + pad, 31)
    fig = Figure(figsize=(6.5, 3.2), layout="constrained")
    ax = fig.subplots()
    for cls, colour in ((0, "tab:blue"), (1, "tab:orange")):
        ax.hist(
            data.prob[data.labels == cls], edges, alpha=0.6, color=colour, label=CLASS_NAMES[cls]
        )
    outside = []
    for (name, t), style in zip(thresholds, ("-", "--"), strict=False):
        if edges[0] <= t <= edges[-1]:
            ax.axvline(t, color="black", linestyle=style, linewidth=1, label=name)
        else:
            outside.append(f"{name} is {'below' if t < lo else 'above'} every score")
    ax.set_xlabel("predicted probability (no metadata)")
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    ax.set_title("; ".join(["score distribution per class", *outside]), fontsize=10)
    return fig


def learning_figure(history: list[dict[str, Any]], best_epoch: Any) -> Figure | None:
    if not history:
        return None
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]

    def series(key: str) -> list[float]:
        return [float(h.get(key, math.nan)) for h in history]

    fig = Figure(figsize=(10, 3.0), layout="constrained")
    losses, val, lr = fig.subplots(1, 3)
    for key in ("loss", "focal", "consistency", "weather"):
        if any(key in h for h in history):
            losses.plot(epochs, series(key), marker=".", label=key)
    losses.set_title("training losses", fontsize=10)
    losses.legend(fontsize=8)
    val.plot(epochs, series("val_mcc"), marker=".", label="val MCC")
    val.plot(epochs, series("val_auc"), marker=".", label="val AUC")
    if isinstance(best_epoch, int | float):
        val.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch}")
    val.set_title("validation (no metadata)", fontsize=10)
    val.legend(fontsize=8)
    lr.plot(epochs, series("lr"), marker=".")
    lr.set_title("learning rate", fontsize=10)
    for ax in (losses, val, lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


# ---- HTML -------------------------------------------------------------------------------------

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


def metrics_section(run: Run) -> str:
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


def audit_section(run: Run) -> str:
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
    data: SetData, samples: dict[str, dict[str, Any]] | None, why: str, run: Run
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


def summary_section(run: Run, data: SetData) -> str:
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
        ("tuned threshold", f"{run.threshold:.4f} (MCC-best on validation, no metadata)"),
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


def render_page(
    run: Run, data: SetData, samples: dict[str, dict[str, Any]] | None, why: str
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


def write_report(run: Path, out: Path | None = None, set_name: str | None = None) -> Path:
    """Write the HTML report of a train-head run folder; returns the page's path."""
    run = Path(run)
    loaded = load_run(run)
    data = choose_set(loaded, set_name)
    samples, why = load_samples(loaded.config.get("cache"))
    page = render_page(loaded, data, samples, why)
    out = Path(out) if out is not None else run / "report.html"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the report to {out}: {exc}") from None
    return out

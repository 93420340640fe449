"""The report's matplotlib figures (confusion matrices, groups, reliability, histograms,
learning curves) as inline PNG data URIs, and the `curve.png` a train-head run saves."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from roadwork_cache.reports.analysis import RELIABILITY_BINS, GroupScore, SetData, reliability
from roadwork_cache.training.loop import EpochLog
from roadwork_cache.training.metrics import binary_metrics, decisions

MAX_BARS = 30  # a plot of more groups is unreadable; the table below it lists them all


DPI = 80


CLASS_NAMES = ("no roadwork (0)", "roadwork (1)")


def png_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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


def save_curve(history: list[EpochLog], best_epoch: int, path: Path) -> None:
    """The report's learning curves, as the run folder's `curve.png`."""
    fig = learning_figure([vars(h) for h in history], best_epoch)
    if fig is not None:
        fig.savefig(path, dpi=110)


def plain(text: str) -> str:
    """Matplotlib reads $...$ as maths; a city name must stay text."""
    return text.replace("$", r"\$")

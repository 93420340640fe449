"""What the HTML report computes from a train-head run folder: the set it reads, MCC per
metadata group and GPS cluster, the hardest errors, and reliability (calibration) bins."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from roadwork_cache.inference.run_folder import RunFolder, prob_column
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.metrics import binary_metrics, decisions
from roadwork_cache.training.sampler import haversine_km, target_centres

# The head on clean views with every metadata field NULL.
PROB_COLUMN = prob_column("head", "clean", "none")
SETS = ("test", "val")


MIN_GROUP_ROWS = 5  # below this an MCC is noise; shown as n/a


N_HARDEST = 20


RELIABILITY_BINS = 10


GROUP_FIELDS = ("weather", "daytime", "scene", "city")


MISSING = "(missing)"


NO_GPS = "no GPS"


@dataclass
class SetData:
    """The labelled rows of one evaluation set, in predictions order."""

    name: str
    ids: list[str]
    labels: np.ndarray
    prob: np.ndarray


def choose_set(run: RunFolder, asked: str | None) -> SetData:
    """The asked set, else 'test' when it has labelled rows, else 'val'."""
    if asked is not None and asked not in SETS:
        raise UserError(f"--set must be one of {', '.join(SETS)}, not {asked!r}")
    name = asked or ("test" if run.rows_of_set("test") else "val")
    rows = run.rows_of_set(name)
    if not rows:
        raise UserError(f"run {run.root} has no labelled rows in its {name!r} set")
    preds = run.predictions
    return SetData(
        name=name,
        ids=[str(preds["id"][i]) for i in rows],
        labels=np.array([int(preds["label"][i]) for i in rows], dtype=np.int64),
        prob=np.array([preds[PROB_COLUMN][i] for i in rows], dtype=np.float64),
    )


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

"""Binary metrics as the StreetVision validator computes them, and threshold tuning.

The validator rounds the returned probability with ``np.round``, which rounds an exact 0.5
down (half to even), so a prediction is positive when ``prob > threshold`` (strictly). Every
function here uses that same strict cut so that offline scores match what a miner gets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

from roadwork_cache.runtime.errors import UserError


def subnet_reward(mcc: float, acc: float) -> float:
    """The StreetVision reward ``(0.5 * max(mcc, 0) + 0.5 * acc) ** 3``.

    A NaN MCC (undefined, e.g. one class only) counts as 0, as the validator does.
    """
    mcc = 0.0 if mcc is None or math.isnan(mcc) else max(float(mcc), 0.0)
    return (0.5 * mcc + 0.5 * float(acc)) ** 3


def _check_binary(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels (0/1) and probabilities (finite, in [0, 1]) of equal, non-zero length."""
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1:
        raise UserError(f"labels and probabilities must be 1-D, got {y.shape} and {p.shape}.")
    if len(y) != len(p):
        raise UserError(f"labels ({len(y)}) and probabilities ({len(p)}) differ in length.")
    if len(y) == 0:
        raise UserError("cannot compute metrics on zero rows.")
    try:
        yi = y.astype(np.int64)
    except (TypeError, ValueError):
        raise UserError("labels must be 0 or 1 (no missing labels).") from None
    if not np.all((yi == 0) | (yi == 1)) or not np.array_equal(yi, y.astype(np.float64)):
        raise UserError("labels must be 0 or 1 (no missing labels).")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise UserError("probabilities must be finite and lie in [0, 1].")
    return yi, p


def decisions(prob: Any, threshold: float = 0.5) -> np.ndarray:
    """Hard 0/1 predictions with the validator's strict cut ``prob > threshold``."""
    return (np.asarray(prob, dtype=np.float64) > threshold).astype(np.int64)


def binary_metrics(y_true: Any, prob: Any, threshold: float = 0.5) -> dict[str, float]:
    """MCC, accuracy, precision, recall, F1, AUC and the subnet reward at one threshold.

    AUC is NaN (not an error) when ``y_true`` holds a single class; MCC is then 0, as
    scikit-learn defines it. Keys: mcc, accuracy, precision, recall, f1, auc, reward,
    threshold, n.
    """
    y, p = _check_binary(y_true, prob)
    pred = decisions(p, threshold)
    mcc = float(matthews_corrcoef(y, pred))
    acc = float(accuracy_score(y, pred))
    # roc_auc_score raises on one class; a tiny validation slice must not crash a report.
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return {
        "mcc": mcc,
        "accuracy": acc,
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "auc": auc,
        "reward": subnet_reward(mcc, acc),
        "threshold": float(threshold),
        "n": int(len(y)),
    }


def _mcc_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """Vectorised MCC over many confusion matrices; 0 where undefined (sklearn's convention)."""
    tp, fp, fn, tn = (a.astype(np.float64) for a in (tp, fp, fn, tn))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        mcc = (tp * tn - fp * fn) / denom
    return np.where(denom > 0, mcc, 0.0)


def best_threshold(y_true: Any, prob: Any) -> float:
    """The threshold in [0, 1] that maximises validation MCC under the cut ``prob > t``.

    Every distinct cut is scored at once from cumulative counts (calling sklearn once per
    candidate would be quadratic). Each cut is an interval ``[p_i, p_{i+1})`` of equivalent
    thresholds; it is represented by 0.5 when 0.5 lies inside (no folding needed), else by
    its midpoint (largest margin to the data). Ties in MCC go to the representative closest
    to 0.5, so a flat optimum never drags the cut to an extreme.
    """
    y, p = _check_binary(y_true, prob)
    uniq = np.unique(p)  # sorted ascending
    # Cut j (j = 0..len(uniq)) predicts positive for p >= uniq[j] (all for j = 0, none at end);
    # equivalently threshold t in [lo_j, hi_j) with lo_j = uniq[j-1] (or 0) and hi_j = uniq[j].
    lo = np.concatenate([[0.0], uniq])
    hi = np.concatenate([uniq, [1.0]])
    # Counts of positives / negatives with p < uniq[j] = predicted negative at cut j.
    idx = np.searchsorted(uniq, p)
    pos_at = np.bincount(idx, weights=y, minlength=len(uniq)).astype(np.float64)
    all_at = np.bincount(idx, minlength=len(uniq)).astype(np.float64)
    fn = np.concatenate([[0.0], np.cumsum(pos_at)])
    neg_below = np.concatenate([[0.0], np.cumsum(all_at - pos_at)])
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    tn = neg_below
    tp = n_pos - fn
    fp = n_neg - tn
    mcc = _mcc_from_counts(tp, fp, fn, tn)
    if hi[0] <= 0.0:
        # A score of exactly 0 exists: "everything positive" needs t < 0, outside [0, 1].
        mcc[0] = -np.inf
    # The first interval is [0, p_min) (threshold below every score): t = p_min is not in it;
    # the last is [p_max, 1] and includes 1.
    inside = (lo <= 0.5) & (hi > 0.5)
    inside[-1] = lo[-1] <= 0.5 <= hi[-1]
    rep = np.where(inside, 0.5, 0.5 * (lo + hi))
    best = mcc.max()
    cand = np.flatnonzero(mcc >= best - 1e-12)
    return float(rep[cand[np.argmin(np.abs(rep[cand] - 0.5))]])

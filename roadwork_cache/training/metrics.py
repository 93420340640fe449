"""Binary metrics as the StreetVision validator computes them, and threshold tuning.

The validator rounds the returned probability with ``np.round``, which rounds an exact 0.5
down (half to even), so a prediction is positive when ``prob > threshold`` (strictly). Every
function here uses that same strict cut so that offline scores match what a miner gets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

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


def balanced_weights(y_true: Any) -> np.ndarray:
    """Row weights that make the two classes weigh the same (mean weight 1): the validator
    draws labels 50/50 whatever the data's rate. One class only: all ones."""
    y = np.asarray(y_true)
    n, pos = len(y), int((y == 1).sum())
    if pos in (0, n):
        return np.ones(n)
    return np.where(y == 1, 0.5 * n / pos, 0.5 * n / (n - pos))


def _check_weights(weight: Any, n: int) -> np.ndarray:
    if weight is None:
        return np.ones(n)
    w = np.asarray(weight, dtype=np.float64).reshape(-1)
    if len(w) != n or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise UserError(f"row weights must be {n} finite, non-negative numbers, not all zero.")
    return w


def binary_metrics(
    y_true: Any, prob: Any, threshold: float = 0.5, weight: Any = None
) -> dict[str, float]:
    """MCC, accuracy, precision, recall, F1, AUC and the subnet reward at one threshold.

    `weight`: per-row weights (e.g. `balanced_weights`, or equal natix levels); counts become
    sums of weights. AUC is NaN (not an error) when ``y_true`` holds a single class; MCC is
    then 0, as scikit-learn defines it. Keys: mcc, accuracy, precision, recall, f1, auc,
    reward, threshold, n (rows, unweighted).
    """
    y, p = _check_binary(y_true, prob)
    w = _check_weights(weight, len(y))
    pred = decisions(p, threshold)
    tp = float(w[(pred == 1) & (y == 1)].sum())
    fp = float(w[(pred == 1) & (y == 0)].sum())
    fn = float(w[(pred == 0) & (y == 1)].sum())
    tn = float(w[(pred == 0) & (y == 0)].sum())
    mcc = float(_mcc_from_counts(*(np.array([c]) for c in (tp, fp, fn, tn)))[0])
    acc = (tp + tn) / w.sum()
    # roc_auc_score raises on one class; a tiny validation slice must not crash a report.
    auc = float(roc_auc_score(y, p, sample_weight=w)) if len(np.unique(y)) == 2 else float("nan")
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0
    return {
        "mcc": mcc,
        "accuracy": acc,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auc": auc,
        "reward": subnet_reward(mcc, acc),
        "threshold": float(threshold),
        "n": int(len(y)),
    }


def _mcc_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """Vectorised MCC over many confusion matrices; 0 where undefined (sklearn's convention)."""
    tp, fp, fn, tn = (a.astype(np.float64) for a in (tp, fp, fn, tn))
    # Weighted counts can dip a hair below zero by rounding: clamp before the root.
    denom = np.sqrt(np.maximum((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        mcc = (tp * tn - fp * fn) / denom
    return np.where(denom > 0, mcc, 0.0)


def best_threshold(y_true: Any, prob: Any, weight: Any = None) -> float:
    """The threshold in (0, 1) that maximises validation MCC under the cut ``prob > t``.

    Every distinct cut is scored at once from cumulative (weighted) counts; calling sklearn
    once per candidate would be quadratic. Each cut is an interval ``[p_i, p_{i+1})`` of
    equivalent thresholds; it is represented by 0.5 when 0.5 lies inside (no folding
    needed), else by its midpoint (largest margin to the data). Ties in MCC go to the
    representative closest to 0.5, so a flat optimum never drags the cut to an extreme.
    Only cuts with a threshold strictly inside (0, 1) are candidates: `fold_threshold` can
    fold nothing else, and no probability output can realise "positive below 0".
    """
    y, p = _check_binary(y_true, prob)
    w = _check_weights(weight, len(y))
    uniq = np.unique(p)  # sorted ascending
    # Cut j (j = 0..len(uniq)) predicts positive for p >= uniq[j] (all for j = 0, none at end);
    # equivalently threshold t in [lo_j, hi_j) with lo_j = uniq[j-1] (or 0) and hi_j = uniq[j].
    lo = np.concatenate([[0.0], uniq])
    hi = np.concatenate([uniq, [1.0]])
    # Weighted positives / negatives with p < uniq[j] = predicted negative at cut j.
    idx = np.searchsorted(uniq, p)
    pos_at = np.bincount(idx, weights=w * y, minlength=len(uniq)).astype(np.float64)
    all_at = np.bincount(idx, weights=w, minlength=len(uniq)).astype(np.float64)
    fn = np.concatenate([[0.0], np.cumsum(pos_at)])
    tn = np.concatenate([[0.0], np.cumsum(all_at - pos_at)])
    n_pos, n_neg = float((w * y).sum()), float((w * (1 - y)).sum())
    tp = n_pos - fn
    fp = n_neg - tn
    mcc = _mcc_from_counts(tp, fp, fn, tn)
    # The first interval is [0, p_min) and the last [p_max, 1]; a cut needs a threshold
    # strictly inside (0, 1) that the interval admits.
    inside = (lo <= 0.5) & (hi > 0.5)
    inside[-1] = lo[-1] <= 0.5 <= hi[-1]
    rep = np.where(inside, 0.5, 0.5 * (lo + hi))
    valid = (rep > 0.0) & (rep < 1.0) & (hi > lo)
    valid[-1] = lo[-1] < 1.0  # [p_max, 1]: any t in [p_max, 1) works unless p_max == 1
    if not valid.any():  # every score is 0 or 1 at once: no cut inside (0, 1) differs
        return 0.5
    mcc = np.where(valid, mcc, -np.inf)
    best = mcc.max()
    cand = np.flatnonzero(mcc >= best - 1e-12)
    return float(rep[cand[np.argmin(np.abs(rep[cand] - 0.5))]])

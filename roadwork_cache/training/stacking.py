"""Combining the logits of ensemble members: mean, MCC-weighted and stacked.

Every combination here is a linear map of the member logits, ``z = Z @ weights + bias``, so
the meta-learner is a handful of numbers stored in JSON (never a pickled estimator) and an
inference bundle needs neither scikit-learn nor the training code:

- ``mean``: the plain mean of the member logits;
- ``weighted``: weights proportional to each member's (clipped) MCC at its own best threshold;
- ``stacked``: a scikit-learn ``LogisticRegression`` fitted on out-of-fold member logits.

Then temperature scaling (one T minimising the NLL of ``sigmoid(z / T)``) and the MCC-best
threshold t*, folded into the output with ``fold_threshold`` so that 0.5 is the cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression

from roadwork_cache.heads.combine import Calibration, Combination, sigmoid
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.metrics import best_threshold, binary_metrics

METHODS = ("mean", "weighted", "stacked")


def member_mcc(y: np.ndarray, z: np.ndarray, weight: np.ndarray | None = None) -> float:
    """(Weighted) MCC of one member's logits at its own MCC-best threshold."""
    prob = sigmoid(z)
    return binary_metrics(y, prob, best_threshold(y, prob, weight), weight)["mcc"]


def fit_combination(
    method: str,
    logits: np.ndarray,
    y: np.ndarray,
    members: Sequence[str],
    seed: int = 0,
    weight: np.ndarray | None = None,
) -> Combination:
    """Fit one combination on (out-of-fold) member logits [n, M], labels [n] and row weights
    (the selection setting's: equal natix levels, balanced labels)."""
    z = np.asarray(logits, dtype=np.float64)
    n_members = z.shape[1]
    if method == "mean":
        return Combination(method, list(members), [1.0 / n_members] * n_members)
    if method == "weighted":
        mcc = np.array([max(member_mcc(y, z[:, m], weight), 0.0) for m in range(n_members)])
        # Every member at chance: no evidence to weight by, so fall back to the mean.
        weights = mcc / mcc.sum() if mcc.sum() > 0 else np.full(n_members, 1.0 / n_members)
        return Combination(method, list(members), weights.tolist())
    if method == "stacked":
        # Logits are on one scale already; mild L2 (C=1) keeps correlated members stable.
        lr = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
        lr.fit(z, y, sample_weight=weight)
        return Combination(method, list(members), lr.coef_[0].tolist(), float(lr.intercept_[0]))
    raise UserError(f"unknown combination method {method!r} (known: {', '.join(METHODS)})")


def fold_combinations(
    method: str,
    logits: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    members: Sequence[str],
    seed: int = 0,
    weight: np.ndarray | None = None,
) -> list[Combination]:
    """One combination per fold, each fitted on the other folds' rows."""
    w = np.ones(len(y)) if weight is None else np.asarray(weight)
    return [
        fit_combination(method, logits[train], y[train], members, seed, w[train])
        for train, _ in folds
    ]


def apply_folds(
    combinations: Sequence[Combination],
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    logits: np.ndarray,
) -> np.ndarray:
    """Out-of-fold combined logits: fold j's rows are combined by the meta-learner fitted
    without them, so a stacked score is as honest as the members' own OOF scores."""
    out = np.zeros(len(logits), dtype=np.float64)
    for combination, (_, val) in zip(combinations, folds, strict=True):
        out[val] = combination.apply(logits[val])
    return out


def fit_temperature(z: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> float:
    """The T > 0 minimising the (weighted) binary NLL of ``sigmoid(z / T)`` (on log T)."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones(len(z)) if weight is None else np.asarray(weight, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        # log(1 + exp(-s)) for y = 1 and log(1 + exp(s)) for y = 0, computed stably.
        return float(np.average(np.logaddexp(0.0, np.where(y > 0.5, -s, s)), weights=w))

    res = minimize_scalar(nll, bounds=(math.log(1e-2), math.log(1e2)), method="bounded")
    return float(math.exp(res.x))


def calibrate(
    z: np.ndarray, y: np.ndarray, temperature: bool = True, weight: np.ndarray | None = None
) -> Calibration:
    """Fit T (optional) and then the MCC-best threshold on the calibrated probabilities."""
    t = fit_temperature(z, y, weight) if temperature else 1.0
    cal = Calibration(temperature=t)
    cal.threshold = best_threshold(y, cal.prob(z), weight)
    return cal


def cross_fitted_calibration(
    z: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    temperature: bool = True,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Per-row logit cut where fold j's cut comes from the calibration fitted on the other
    folds' rows: a score at that cut is as honest as the logits it cuts."""
    w = np.ones(len(z)) if weight is None else np.asarray(weight)
    cuts = np.zeros(len(z), dtype=np.float64)
    for train, val in folds:
        cuts[val] = calibrate(z[train], y[train], temperature, w[train]).cut()
    return cuts

"""The members' out-of-fold logits combined three ways (mean, MCC-weighted, stacked).

Everything is fitted in the selection setting (`training.selection`): the rows' natix
variants pooled, each level weighing the same, metadata NULL, labels balanced 50/50. Each
method is scored cross-fitted twice over: fold j's combined logit comes from weights fitted
without fold j, and its temperature and threshold from a calibration fitted without fold j.
The best (or the asked) method is deployed with the calibration fitted on every OOF row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from roadwork_cache.heads.combine import Calibration, Combination, sigmoid
from roadwork_cache.runtime.progress import console
from roadwork_cache.training.members import MemberResult
from roadwork_cache.training.plan import EnsembleOptions, Prepared
from roadwork_cache.training.selection import Selection
from roadwork_cache.training.stacking import (
    METHODS,
    apply_folds,
    calibrate,
    cross_fitted_calibration,
    fit_combination,
    fold_combinations,
)

Folds = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass
class Pooled:
    """Every (row, selection variant) of a set as one array, metadata NULL."""

    z: np.ndarray  # [n * V] or [n * V, M] logits
    y: np.ndarray  # [n * V]
    weight: np.ndarray  # [n * V]: equal levels, balanced labels
    row: np.ndarray  # [n * V]: the row each entry belongs to

    def folds(self, folds: Folds) -> list[tuple[np.ndarray, np.ndarray]]:
        """Row folds as positions into the pooled entries."""
        return [
            (np.flatnonzero(np.isin(self.row, tr)), np.flatnonzero(np.isin(self.row, va)))
            for tr, va in folds
        ]

    def per_row(self, values: np.ndarray, n: int) -> np.ndarray:
        """A value that depends only on the row (a fold's cut), back to one per row."""
        out = np.zeros(n)
        out[self.row] = values
        return out


def pool(logits: dict[str, np.ndarray], y: np.ndarray, selection: Selection) -> Pooled:
    z = [logits[f"{v}:none"] for v in selection.variants]
    y_all, _, w_all = selection.pool(y, [np.zeros(len(y))] * len(z))
    rows = np.concatenate([np.arange(len(y))] * len(z))
    return Pooled(np.concatenate(z), y_all, w_all, rows)


def cross_fitted_row_cuts(
    logits: dict[str, np.ndarray],
    y: np.ndarray,
    folds: Folds,
    selection: Selection,
    temperature: bool = False,
) -> np.ndarray:
    """Per-row logit cut, fold j's fitted on the other folds' rows in the selection
    setting: what every reported out-of-fold or target score is cut at."""
    p = pool(logits, y, selection)
    cuts = cross_fitted_calibration(p.z, p.y, p.folds(folds), temperature, p.weight)
    return p.per_row(cuts, len(y))


def selection_mcc(
    logits: dict[str, np.ndarray], y: np.ndarray, cut: float | np.ndarray, selection: Selection
) -> float:
    """MCC in the selection setting of logits cut at `cut` (a scalar, or one per row)."""
    cuts = np.broadcast_to(np.asarray(cut, dtype=np.float64), y.shape)
    probs = [sigmoid(logits[f"{v}:none"] - cuts) for v in selection.variants]
    return selection.metrics(y, probs, 0.5)["mcc"]


@dataclass
class Combined:
    """Member logits stacked [n, M] per key, the three combinations and their calibration."""

    z_oof: dict[str, np.ndarray]
    z_test: dict[str, np.ndarray]
    z_target: dict[str, np.ndarray]
    member_cal: dict[str, Calibration]  # fitted on every OOF row: each fold folder's own cut
    member_cuts: dict[str, np.ndarray]  # per OOF row, cross-fitted: what member rows report
    member_mcc: dict[str, float]  # cross-fitted, in the selection setting
    combos: dict[str, Combination]  # fitted on every OOF row: what is deployed
    oof: dict[str, dict[str, np.ndarray]]  # method -> key -> cross-fitted OOF logit
    cal: dict[str, Calibration]  # fitted on every (cross-fitted) OOF row: what is deployed
    oof_cuts: dict[str, np.ndarray]  # method -> per OOF row, cross-fitted calibration cut
    oof_mcc: dict[str, float]  # cross-fitted, in the selection setting
    method: str


def combine(opts: EnsembleOptions, p: Prepared, results: dict[str, MemberResult]) -> Combined:
    names, y, sel = p.names, p.y_pool, p.selection
    keys = list(results[names[0]].oof)
    z_oof = {k: np.stack([results[n].oof[k] for n in names], 1) for k in keys}
    z_test = {k: np.stack([results[n].test[k] for n in names], 1) for k in keys}
    z_target: dict[str, np.ndarray] = {}
    if p.target is not None:
        z_target = (
            {
                k: np.stack([results[n].target[k] for n in names], 1)
                for k in results[names[0]].target
            }
            if p.target.separate
            else z_test
        )
    pooled = pool(z_oof, y, sel)
    pfolds = pooled.folds(p.folds)

    member_cal, member_cuts, member_mcc = {}, {}, {}
    for i, n in enumerate(names):
        z = pooled.z[:, i]
        member_cal[n] = calibrate(z, pooled.y, temperature=False, weight=pooled.weight)
        cuts = cross_fitted_calibration(z, pooled.y, pfolds, False, pooled.weight)
        member_cuts[n] = pooled.per_row(cuts, len(y))
        member_mcc[n] = selection_mcc(results[n].oof, y, member_cuts[n], sel)

    combos = {
        m: fit_combination(m, pooled.z, pooled.y, names, opts.seed, pooled.weight) for m in METHODS
    }
    oof, cal, oof_cuts, oof_mcc = {}, {}, {}, {}
    for m in METHODS:
        per_fold = fold_combinations(m, pooled.z, pooled.y, pfolds, names, opts.seed, pooled.weight)
        oof[m] = {k: apply_folds(per_fold, p.folds, z_oof[k]) for k in keys}
        combined = pool(oof[m], y, sel)
        cal[m] = calibrate(combined.z, combined.y, weight=combined.weight)
        cuts = cross_fitted_calibration(combined.z, combined.y, pfolds, True, combined.weight)
        oof_cuts[m] = combined.per_row(cuts, len(y))
        oof_mcc[m] = selection_mcc(oof[m], y, oof_cuts[m], sel)
    # Ties go to the simpler method (METHODS is ordered simplest first).
    method = (
        opts.combine
        if opts.combine != "auto"
        else max(METHODS, key=lambda m: (round(oof_mcc[m], 6), -METHODS.index(m)))
    )
    console.print(
        f"OOF MCC ({sel.name}, no metadata, 50/50, cross-fitted): "
        + ", ".join(f"{n} {member_mcc[n]:+.3f}" for n in names)
        + " | "
        + ", ".join(f"{m} {oof_mcc[m]:+.3f}" for m in METHODS)
        + f" -> {method}"
    )
    return Combined(
        z_oof,
        z_test,
        z_target,
        member_cal,
        member_cuts,
        member_mcc,
        combos,
        oof,
        cal,
        oof_cuts,
        oof_mcc,
        method,
    )

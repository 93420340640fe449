"""The members' out-of-fold logits combined three ways (mean, MCC-weighted, stacked), each
scored cross-fitted and calibrated; the best (or the asked) method is the one deployed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from roadwork_cache.heads.combine import Calibration, Combination, sigmoid
from roadwork_cache.runtime.progress import console
from roadwork_cache.training.members import CLEAN, MemberResult
from roadwork_cache.training.metrics import binary_metrics
from roadwork_cache.training.plan import EnsembleOptions, Prepared
from roadwork_cache.training.stacking import (
    METHODS,
    apply_folds,
    calibrate,
    fit_combination,
    fold_combinations,
)


@dataclass
class Combined:
    """Member logits stacked [n, M] per key, the three combinations and their calibration."""

    z_oof: dict[str, np.ndarray]
    z_test: dict[str, np.ndarray]
    z_target: dict[str, np.ndarray]
    member_cal: dict[str, Calibration]
    member_mcc: dict[str, float]
    combos: dict[str, Combination]  # fitted on every OOF row: what is deployed
    oof: dict[str, dict[str, np.ndarray]]  # method -> key -> cross-fitted OOF logit
    cal: dict[str, Calibration]
    oof_mcc: dict[str, float]
    method: str


def combine(opts: EnsembleOptions, p: Prepared, results: dict[str, MemberResult]) -> Combined:
    names, y = p.names, p.y_pool
    member_cal = {n: calibrate(results[n].oof[CLEAN], y, temperature=False) for n in names}
    member_mcc = {
        n: binary_metrics(y, sigmoid(results[n].oof[CLEAN]), member_cal[n].threshold)["mcc"]
        for n in names
    }
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
    combos = {m: fit_combination(m, z_oof[CLEAN], y, names, opts.seed) for m in METHODS}
    oof = {}
    for m in METHODS:
        per_fold = fold_combinations(m, z_oof[CLEAN], y, p.folds, names, opts.seed)
        oof[m] = {k: apply_folds(per_fold, p.folds, z_oof[k]) for k in keys}
    cal = {m: calibrate(oof[m][CLEAN], y) for m in METHODS}
    oof_mcc = {
        m: binary_metrics(y, cal[m].prob(oof[m][CLEAN]), cal[m].threshold)["mcc"] for m in METHODS
    }
    # Ties go to the simpler method (METHODS is ordered simplest first).
    method = (
        opts.combine
        if opts.combine != "auto"
        else max(METHODS, key=lambda m: (round(oof_mcc[m], 6), -METHODS.index(m)))
    )
    console.print(
        "OOF MCC (no metadata): "
        + ", ".join(f"{n} {member_mcc[n]:+.3f}" for n in names)
        + " | "
        + ", ".join(f"{m} {oof_mcc[m]:+.3f}" for m in METHODS)
        + f" -> {method}"
    )
    return Combined(
        z_oof, z_test, z_target, member_cal, member_mcc, combos, oof, cal, oof_mcc, method
    )

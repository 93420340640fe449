"""Train / validation splits and k folds grouped by video (docs/design.md §1 and §6).

Frames of one video are near-duplicates: if they straddle the split, validation scores are
inflated. Every split here keeps each group (``video_info.vid_id``) on one side, stratified
on the label with scikit-learn's ``StratifiedGroupKFold``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from roadwork_cache.runtime.errors import UserError

# Split names are matched case-insensitively; a few common synonyms are accepted.
VAL_NAMES = frozenset({"val", "validation", "valid", "dev"})
TRAIN_NAMES = frozenset({"", "train", "training"})
TEST_NAMES = frozenset({"test", "testing"})


def _is_missing(value: Any) -> bool:
    """None, NaN (float or pandas NA) and empty / blank strings count as missing."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(value != value)  # NaN and pd.NA are not equal to themselves
    except (TypeError, ValueError):
        return False


def group_codes(groups: Any) -> np.ndarray:
    """Integer code per row; each row with a missing group gets a singleton code of its own.

    Why singletons: a frame with no video id cannot be proven to share a video with anything,
    and lumping all of them into one "unknown" group would move them across the split as one
    block and wreck stratification.
    """
    values = list(groups)
    codes = np.empty(len(values), dtype=np.int64)
    seen: dict[Any, int] = {}
    for i, v in enumerate(values):
        if _is_missing(v):
            codes[i] = i  # row index: below every named code, so never shared
            continue
        key = v.item() if isinstance(v, np.generic) else v
        if key not in seen:
            seen[key] = len(values) + len(seen)  # offset by n keeps named codes apart
        codes[i] = seen[key]
    return codes


def _check_labels(labels: Any, n_groups: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise UserError(f"labels must be 1-D, got shape {y.shape}.")
    if len(y) != n_groups:
        raise UserError(f"labels ({len(y)}) and groups ({n_groups}) differ in length.")
    try:
        yi = y.astype(np.float64)
    except (TypeError, ValueError):
        raise UserError("labels must be 0 or 1 with none missing.") from None
    if not np.all((yi == 0) | (yi == 1)):
        raise UserError("labels must be 0 or 1 with none missing.")
    return yi.astype(np.int64)


def _check_fold(fold: int, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
    """Raise when a side of a fold is empty or holds one class (MCC is meaningless there)."""
    for side, idx in (("validation", val_idx), ("training", train_idx)):
        if len(idx) == 0:
            raise UserError(f"{side} fold {fold} is empty; use fewer folds or more groups.")
        present = np.unique(y[idx])
        if len(present) < 2:
            raise UserError(
                f"{side} fold {fold} has only label {int(present[0])} ({len(idx)} rows); "
                "use fewer folds or add videos of the other class."
            )


def _sgkf(y: np.ndarray, codes: np.ndarray, n_splits: int, seed: int) -> list[tuple]:
    n_groups = len(np.unique(codes))
    if n_groups < n_splits:
        raise UserError(f"cannot make {n_splits} grouped folds from only {n_groups} groups.")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "least populated class has only m members": the fold check below is the real test.
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(np.zeros(len(y)), y, codes))


def _split_names(split_column: Any, n: int) -> np.ndarray:
    names = np.array(
        ["" if _is_missing(s) else str(s).strip().lower() for s in split_column], dtype=object
    )
    if len(names) != n:
        raise UserError(f"split column ({len(names)}) and labels ({n}) differ in length.")
    # Other split names (readers keep them) train, like 'train': the stages report them.
    return names


def grouped_split(
    labels: Any,
    groups: Any,
    val_fraction: float = 0.2,
    seed: int = 0,
    split_column: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (train_idx, val_idx) so that no group is on both sides.

    Without a usable ``split_column`` this is the first fold of a
    ``StratifiedGroupKFold(round(1 / val_fraction))``, so the validation share is about
    ``val_fraction`` (groups make it inexact). With a ``split_column`` ('train' / 'val' /
    'validation' / 'test' / None per row):
    - rows marked 'test' are held out of both sides (they are the final judge, not tuning);
    - if any row is marked 'val' or 'validation', those rows are the validation set and the
      remaining non-test rows train; training rows whose group also occurs in validation are
      dropped with a warning, so the no-shared-group rule holds for user splits too;
    - otherwise the grouped split runs over the non-test rows.
    Indices are sorted int64 arrays into the original rows.
    """
    codes = group_codes(groups)
    y = _check_labels(labels, len(codes))
    if not 0.0 < val_fraction <= 0.5:
        raise UserError(f"val_fraction must lie in (0, 0.5], got {val_fraction}.")

    pool = np.arange(len(y))
    if split_column is not None:
        names = _split_names(split_column, len(y))
        is_val = np.isin(names, list(VAL_NAMES))
        pool = np.flatnonzero(~np.isin(names, list(TEST_NAMES)))
        if is_val.any():
            val_idx = np.flatnonzero(is_val)
            train_idx = pool[~is_val[pool]]
            shared = np.isin(codes[train_idx], codes[val_idx])
            if shared.any():
                warnings.warn(
                    f"dropped {int(shared.sum())} training rows whose video also occurs in the "
                    "validation split.",
                    stacklevel=2,
                )
                train_idx = train_idx[~shared]
            _check_fold(1, y, train_idx, val_idx)
            return train_idx.astype(np.int64), val_idx.astype(np.int64)

    n_splits = max(2, round(1.0 / val_fraction))
    tr, va = _sgkf(y[pool], codes[pool], n_splits, seed)[0]
    train_idx, val_idx = np.sort(pool[tr]), np.sort(pool[va])
    _check_fold(1, y, train_idx, val_idx)
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


def grouped_folds(
    labels: Any, groups: Any, k: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` stratified folds grouped by ``groups``: a list of (train_idx, val_idx).

    Every row is in exactly one validation fold; folds are numbered from 1 in error messages.
    """
    codes = group_codes(groups)
    y = _check_labels(labels, len(codes))
    if not isinstance(k, int | np.integer) or k < 2:
        raise UserError(f"k must be an integer of at least 2, got {k}.")
    folds = []
    for fold, (tr, va) in enumerate(_sgkf(y, codes, int(k), seed), start=1):
        tr, va = np.sort(tr).astype(np.int64), np.sort(va).astype(np.int64)
        _check_fold(fold, y, tr, va)
        folds.append((tr, va))
    return folds

"""Train / validation splits and k folds grouped by video (docs/design.md §1 and §6).

Frames of one video are near-duplicates: if they straddle the split, validation scores are
inflated. Every split here keeps each group (``video_info.vid_id``) on one side, stratified
on the label with scikit-learn's ``StratifiedGroupKFold``.

``grouped_split`` and ``grouped_folds`` make exactly what they are asked for, or refuse. The
stages call ``choose_split`` and ``choose_folds``, which fall back on small data, where a
fold of a few videos can hold one label only: other folds of the same splitter, fewer
folds, then a grouped hold-out built to keep both labels on both sides. They refuse only
when a label occurs in fewer than two videos (no split can then show it on both sides), and
say what they chose.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
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


# ---- automatic choices for small data ---------------------------------------------------------


@dataclass(frozen=True)
class SplitChoice:
    """A train / validation split and, when it is not the default one, what was chosen."""

    train: np.ndarray
    val: np.ndarray
    note: str = ""  # e.g. "a grouped hold-out keeping both labels (fold 1 had only label 1)"


@dataclass(frozen=True)
class FoldsChoice:
    folds: list[tuple[np.ndarray, np.ndarray]]
    note: str = ""  # e.g. "3 folds, not 5: with 5, validation fold 2 has only label 0"

    @property
    def k(self) -> int:
        return len(self.folds)


def _valid(y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray) -> bool:
    return all(len(np.unique(y[idx])) == 2 for idx in (train_idx, val_idx))


def _why(exc: UserError) -> str:
    return str(exc).split(";")[0].rstrip(".")


def _require_two_videos_per_label(y: np.ndarray, codes: np.ndarray) -> None:
    """The one case no split can serve: a label seen in fewer than two videos."""
    for label in (0, 1):
        videos = np.unique(codes[y == label])
        if len(videos) < 2:
            rows = int((y == label).sum())
            raise UserError(
                f"label {label} occurs in {len(videos)} video(s) ({rows} rows): training and "
                "validation each need a video of both labels; add videos of that label"
            )


def _label_groups(y: np.ndarray, codes: np.ndarray) -> dict[int, list[int]]:
    return {c: np.unique(codes[y == c]).tolist() for c in (0, 1)}


def _holdout(y: np.ndarray, codes: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Validation rows of a grouped hold-out with both labels on both sides: a video of each
    label first, then whole videos of the scarcer label in validation until it holds about
    `fraction` of the rows, never taking the last video of a label from training."""
    rng = np.random.default_rng(seed)
    by_label = _label_groups(y, codes)
    groups = np.unique(codes)
    rows_of = {g: np.flatnonzero(codes == g) for g in groups}
    labels_of = {g: set(y[rows_of[g]].tolist()) for g in groups}

    def train_keeps_both(val: set) -> bool:
        return all(any(g not in val for g in by_label[c]) for c in (0, 1))

    val: set = set()
    for c in (0, 1):  # one video of each label (a mixed video may serve both)
        if any(c in labels_of[g] for g in val):
            continue
        for g in rng.permutation(by_label[c]).tolist():
            if train_keeps_both(val | {g}):
                val.add(g)
                break
    target = fraction * len(y)
    share = y.mean()
    for g in rng.permutation(groups).tolist():
        size = sum(len(rows_of[v]) for v in val)
        if size >= target:
            break
        if g in val or size + len(rows_of[g]) > target * 1.5:
            continue
        val_pos = np.concatenate([y[rows_of[v]] for v in val]).mean()
        wanted = 1 if val_pos < share else 0  # stratify: add the label validation lacks
        if wanted in labels_of[g] and train_keeps_both(val | {g}):
            val.add(g)
    return np.sort(np.flatnonzero(np.isin(codes, list(val))))


def choose_split(
    labels: Any,
    groups: Any,
    val_fraction: float = 0.2,
    seed: int = 0,
    split_column: Any = None,
) -> SplitChoice:
    """``grouped_split`` when its split has both labels on both sides; otherwise another fold
    of the same splitter, then a grouped hold-out built to keep both labels (stated in
    ``note``). A split the user gave (a 'val' split column) is kept as given."""
    codes = group_codes(groups)
    y = _check_labels(labels, len(codes))
    pool = np.arange(len(y))
    if split_column is not None:
        names = _split_names(split_column, len(y))
        pool = np.flatnonzero(~np.isin(names, list(TEST_NAMES)))
        user_split = bool(np.isin(names, list(VAL_NAMES)).any())
    else:
        user_split = False
    try:
        return SplitChoice(*grouped_split(labels, groups, val_fraction, seed, split_column))
    except UserError as exc:
        if user_split or not 0.0 < val_fraction <= 0.5:
            raise  # the user's own validation split, or a bad fraction: theirs to change
        why = _why(exc)
    y_pool, codes_pool = y[pool], codes[pool]
    _require_two_videos_per_label(y_pool, codes_pool)
    n_splits = max(2, round(1.0 / val_fraction))
    if len(np.unique(codes_pool)) >= n_splits:
        for k, (tr, va) in enumerate(_sgkf(y_pool, codes_pool, n_splits, seed)[1:], start=2):
            if _valid(y_pool, tr, va):
                return SplitChoice(
                    np.sort(pool[tr]), np.sort(pool[va]), f"fold {k} of {n_splits} ({why})"
                )
    va = _holdout(y_pool, codes_pool, val_fraction, seed)
    tr = np.setdiff1d(np.arange(len(pool)), va)
    _check_fold(1, y_pool, tr, va)  # a guard: the hold-out is built to pass it
    return SplitChoice(
        pool[tr].astype(np.int64),
        pool[va].astype(np.int64),
        f"a grouped hold-out keeping both labels on both sides ({why})",
    )


def _two_parts(y: np.ndarray, codes: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two folds, both labels in each: a video of each label on each side first, the other
    videos then to the smaller side."""
    rng = np.random.default_rng(seed)
    first = _holdout(y, codes, 0.0, seed)  # one video of each label, training keeps both
    side = {g: 0 for g in np.unique(codes[first])}
    rest = [g for g in rng.permutation(np.unique(codes)).tolist() if g not in side]
    by_label = _label_groups(y, codes)
    for c in (0, 1):  # the other side's video of each label
        if not any(side.get(g) == 1 for g in by_label[c]):
            g = next(g for g in rest if g in by_label[c] and g not in side)
            side[g] = 1
    sizes = [0, 0]
    for g, s in side.items():
        sizes[s] += int((codes == g).sum())
    for g in rest:
        if g in side:
            continue
        s = int(sizes[1] < sizes[0])
        side[g] = s
        sizes[s] += int((codes == g).sum())
    part = np.array([side[g] for g in codes])
    a, b = np.flatnonzero(part == 0), np.flatnonzero(part == 1)
    return [(b, a), (a, b)]


def choose_folds(labels: Any, groups: Any, k: int = 5, seed: int = 0) -> FoldsChoice:
    """``grouped_folds(k)`` when every fold has both labels on both sides; otherwise the
    most folds (k-1 down to 2) that do, or two folds built to keep both labels (stated in
    ``note``). Refuses only when a label occurs in fewer than two videos."""
    try:
        return FoldsChoice(grouped_folds(labels, groups, k, seed))
    except UserError as exc:
        if not isinstance(k, int | np.integer) or k < 2:
            raise
        why = _why(exc)
    codes = group_codes(groups)
    y = _check_labels(labels, len(codes))
    _require_two_videos_per_label(y, codes)
    for fewer in range(int(k) - 1, 1, -1):
        try:
            folds = grouped_folds(y, codes, fewer, seed)
        except UserError:
            continue
        return FoldsChoice(folds, f"{fewer} folds, not {k} ({why} with {k})")
    folds = [
        (np.sort(tr).astype(np.int64), np.sort(va).astype(np.int64))
        for tr, va in _two_parts(y, codes, seed)
    ]
    for fold, (tr, va) in enumerate(folds, start=1):
        _check_fold(fold, y, tr, va)  # a guard: the two parts are built to pass it
    return FoldsChoice(folds, f"2 folds built to keep both labels, not {k} ({why} with {k})")

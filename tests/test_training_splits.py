"""Grouped, stratified splits: no video on both sides of a split."""

import numpy as np
import pytest

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.splits import (
    choose_folds,
    choose_split,
    group_codes,
    grouped_folds,
    grouped_split,
)


def _videos(n_videos=60, seed=0):
    """Rows in videos of 1-8 frames; about 80 % of videos are roadwork (label per video)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, n_videos)
    groups = np.repeat([f"v{i}" for i in range(n_videos)], sizes).astype(object)
    labels = np.repeat((rng.uniform(size=n_videos) < 0.8).astype(int), sizes)
    return labels, groups


def test_no_group_shared_and_covers_all_rows():
    y, g = _videos()
    tr, va = grouped_split(y, g, val_fraction=0.2, seed=3)
    assert not set(g[tr]) & set(g[va])
    assert sorted(np.r_[tr, va]) == list(range(len(y)))
    assert 0.1 < len(va) / len(y) < 0.3


def test_folds_disjoint_groups_and_partition():
    y, g = _videos()
    folds = grouped_folds(y, g, k=4, seed=1)
    assert len(folds) == 4
    all_val = np.concatenate([va for _, va in folds])
    assert sorted(all_val) == list(range(len(y)))
    for tr, va in folds:
        assert not set(g[tr]) & set(g[va])


def test_stratification_keeps_label_share():
    y, g = _videos(n_videos=300, seed=2)
    overall = y.mean()
    for _, va in grouped_folds(y, g, k=5, seed=0):
        assert abs(y[va].mean() - overall) < 0.05


def test_split_column_respected():
    y, g = _videos()
    rng = np.random.default_rng(5)
    # Assign whole videos to val so the user split is itself clean; a few rows are test.
    vids = np.unique(g)
    val_vids = set(rng.choice(vids, 12, replace=False))
    split = np.array(["val" if v in val_vids else "train" for v in g], dtype=object)
    split[:3] = "test"
    split[3] = None
    tr, va = grouped_split(y, g, split_column=split)
    assert set(va) == set(np.flatnonzero(split == "val"))
    assert not set(tr) & {0, 1, 2}  # test rows held out
    assert set(tr) == set(range(len(y))) - set(va) - {0, 1, 2}


def test_split_column_drops_train_rows_sharing_a_video_with_val():
    y = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    g = np.array(["a", "a", "b", "b", "c", "c", "d", "d"], dtype=object)
    split = np.array(
        ["val", "train", "val", "val", "train", "train", "train", "train"], dtype=object
    )
    with pytest.warns(UserWarning, match="dropped 1 training rows"):
        tr, va = grouped_split(y, g, split_column=split)
    assert list(va) == [0, 2, 3]
    assert list(tr) == [4, 5, 6, 7]


def test_missing_groups_are_singletons():
    g = np.array(["a", None, "a", np.nan, "", "b", None], dtype=object)
    codes = group_codes(g)
    assert codes[0] == codes[2]
    missing = codes[[1, 3, 4, 6]]
    assert len(set(missing)) == 4 and not set(missing) & {codes[0], codes[5]}
    # With every id missing, rows split independently (about 20 % validation, not all-or-none).
    y = np.tile([0, 1, 1, 1, 1], 20)
    tr, va = grouped_split(y, [None] * len(y), val_fraction=0.2)
    assert len(va) == 20 and len(tr) == 80


def test_one_class_validation_fold_raises():
    # Only two videos carry label 0; with 4 folds some validation fold has only label 1.
    y = np.array([0] * 5 + [0] * 5 + [1] * 30)
    g = np.repeat(["n1", "n2", "p1", "p2", "p3", "p4", "p5", "p6"], 5)
    with pytest.raises(UserError, match=r"validation fold \d has only label 1"):
        grouped_folds(y, g, k=4, seed=0)


def test_bad_labels_raise():
    with pytest.raises(UserError):
        grouped_split([0, 1, None], ["a", "b", "c"])
    with pytest.raises(UserError):
        grouped_split([0, 1, 1], ["a", "b"])


def test_split_names_case_insensitive_and_other_names_train():
    y = np.array([0, 1, 0, 1, 0, 1])
    g = np.array(["a", "b", "c", "d", "e", "f"], dtype=object)
    tr, va = grouped_split(y, g, split_column=["Train", "TRAIN", "Validation", "val", "train", ""])
    assert list(va) == [2, 3] and list(tr) == [0, 1, 4, 5]
    # Other split names are kept (readers keep them, stages report them) and train.
    tr, va = grouped_split(y, g, split_column=["train", "holdout", "val", "val", "train", "extra"])
    assert list(va) == [2, 3] and list(tr) == [0, 1, 4, 5]


# ---- small data: the automatic choices --------------------------------------------------------


def _small(seed, n_videos=None):
    """A few videos of 2-8 frames; each video one label, or mixed now and then."""
    rng = np.random.default_rng(seed)
    n_videos = n_videos or int(rng.integers(4, 14))
    y, g = [], []
    for v in range(n_videos):
        size = int(rng.integers(2, 9))
        label = int(rng.random() < 0.75)
        mixed = rng.random() < 0.15
        y += [int(rng.random() < 0.5) if mixed else label for _ in range(size)]
        g += [f"v{v}"] * size
    return np.array(y), np.array(g, dtype=object)


def _two_videos_per_label(y, g):
    return all(len(set(g[y == c])) >= 2 for c in (0, 1))


def _assert_valid(y, g, tr, va):
    assert len(set(y[tr])) == 2 and len(set(y[va])) == 2
    assert not set(g[tr]) & set(g[va])


def test_the_60_synthetic_rows_get_a_hold_out_with_both_labels():
    """The train pool of `roadwork synth --rows 60`: two videos of label 0 among nine, where
    the first of five grouped folds holds one positive video only."""
    sizes = {"a": 3, "b": 3, "c": 6, "d": 8, "e": 7, "f": 4, "n1": 6, "p": 3, "n2": 4}
    g = np.array([v for v, n in sizes.items() for _ in range(n)], dtype=object)
    y = np.array([0 if v.startswith("n") else 1 for v in g])
    with pytest.raises(UserError, match="has only label"):
        grouped_split(y, g, val_fraction=0.2, seed=42)
    choice = choose_split(y, g, val_fraction=0.2, seed=42)
    _assert_valid(y, g, choice.train, choice.val)
    assert sorted(np.r_[choice.train, choice.val]) == list(range(len(y)))
    assert "has only label" in choice.note
    assert 0.1 < len(choice.val) / len(y) < 0.45


def test_the_default_split_and_folds_are_kept_when_they_work():
    y, g = _videos()
    choice = choose_split(y, g, val_fraction=0.2, seed=3)
    tr, va = grouped_split(y, g, val_fraction=0.2, seed=3)
    assert choice.note == "" and np.array_equal(choice.train, tr) and np.array_equal(choice.val, va)
    folds = choose_folds(y, g, k=4, seed=1)
    assert folds.note == "" and folds.k == 4


def test_fewer_folds_when_k_folds_leave_a_fold_with_one_label():
    y = np.array([0] * 5 + [0] * 5 + [1] * 30)
    g = np.repeat(["n1", "n2", "p1", "p2", "p3", "p4", "p5", "p6"], 5)
    choice = choose_folds(y, g, k=4, seed=0)
    assert choice.k == 2 and "not 4" in choice.note
    for tr, va in choice.folds:
        _assert_valid(y, g, tr, va)


@pytest.mark.parametrize("seed", range(60))
def test_any_small_data_with_two_videos_per_label_gets_valid_splits_and_folds(seed):
    y, g = _small(seed)
    if not _two_videos_per_label(y, g):
        with pytest.raises(UserError, match=r"label \d occurs in [01] video\(s\)"):
            choose_folds(y, g, k=5, seed=seed)
        return
    choice = choose_split(y, g, val_fraction=0.2, seed=seed)
    _assert_valid(y, g, choice.train, choice.val)
    assert sorted(np.r_[choice.train, choice.val]) == list(range(len(y)))
    folds = choose_folds(y, g, k=5, seed=seed)
    assert 2 <= folds.k <= 5 and (folds.note == "") == (folds.k == 5)
    assert sorted(np.concatenate([va for _, va in folds.folds])) == list(range(len(y)))
    for tr, va in folds.folds:
        _assert_valid(y, g, tr, va)
        assert sorted(np.r_[tr, va]) == list(range(len(y)))


def test_a_label_in_one_video_is_refused_in_one_sentence():
    y = np.array([0] * 4 + [1] * 12)
    g = np.repeat(["n", "p1", "p2", "p3"], 4)
    for choose in (lambda: choose_split(y, g), lambda: choose_folds(y, g, k=3)):
        with pytest.raises(UserError, match=r"label 0 occurs in 1 video\(s\) \(4 rows\)"):
            choose()


def test_a_users_validation_split_is_not_replaced():
    y = np.array([0, 0, 1, 1, 1, 1])
    g = np.array(["a", "b", "c", "d", "e", "f"], dtype=object)
    split = ["train", "train", "val", "val", "train", "train"]
    with pytest.raises(UserError, match="validation fold 1 has only label 1"):
        choose_split(y, g, split_column=split)

"""Metrics and threshold folding as the StreetVision validator scores them."""

import math

import numpy as np
import pytest

from roadwork_cache.heads.combine import fold_logits, fold_threshold
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.metrics import best_threshold, binary_metrics, subnet_reward


def test_reward_formula_and_negative_mcc_clipped():
    assert subnet_reward(0.6, 0.8) == pytest.approx((0.3 + 0.4) ** 3)
    assert subnet_reward(1.0, 1.0) == pytest.approx(1.0)
    # A negative MCC counts as 0, not as a penalty.
    assert subnet_reward(-0.7, 0.5) == pytest.approx(0.25**3)
    assert subnet_reward(float("nan"), 0.5) == pytest.approx(0.25**3)


def test_known_confusion_matrix():
    # TP=6, FN=2, FP=1, TN=3 (12 rows).
    y = np.array([1] * 8 + [0] * 4)
    prob = np.array([0.9] * 6 + [0.2] * 2 + [0.7] + [0.1] * 3)
    m = binary_metrics(y, prob)
    tp, fn, fp, tn = 6, 2, 1, 3
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["mcc"] == pytest.approx(mcc)  # 16 / sqrt(7*8*4*5) = 0.478
    assert m["accuracy"] == pytest.approx(9 / 12)
    assert m["precision"] == pytest.approx(6 / 7)
    assert m["recall"] == pytest.approx(6 / 8)
    assert m["f1"] == pytest.approx(2 * 6 / (2 * 6 + 1 + 2))
    assert m["reward"] == pytest.approx((0.5 * mcc + 0.5 * 0.75) ** 3)
    assert m["n"] == 12 and m["threshold"] == 0.5
    assert 0.5 < m["auc"] <= 1.0


def test_exact_half_is_negative_like_np_round():
    # The validator uses np.round, which sends 0.5 to 0.
    m = binary_metrics([0, 1], [0.5, 0.51])
    assert m["accuracy"] == 1.0


def test_one_class_auc_is_nan_not_crash():
    m = binary_metrics([1, 1, 1], [0.2, 0.8, 0.9])
    assert math.isnan(m["auc"])
    assert m["mcc"] == 0.0
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_bad_input_raises_user_error():
    with pytest.raises(UserError):
        binary_metrics([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(UserError):
        binary_metrics([0, 1], [0.1])
    with pytest.raises(UserError):
        fold_threshold([0.2], 1.0)


def test_best_threshold_finds_planted_optimum():
    rng = np.random.default_rng(0)
    neg = rng.uniform(0.0, 0.28, 200)
    pos = rng.uniform(0.32, 1.0, 200)
    y = np.r_[np.zeros(200), np.ones(200)]
    p = np.r_[neg, pos]
    t = best_threshold(y, p)
    assert neg.max() < t < pos.min()
    assert binary_metrics(y, p, t)["mcc"] == pytest.approx(1.0)
    assert binary_metrics(y, p, 0.5)["mcc"] < 0.9


def test_best_threshold_prefers_half_on_ties():
    # Perfectly separated around 0.5: every cut in (0.2, 0.8) is optimal; 0.5 is chosen.
    assert best_threshold([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.5


def test_fold_threshold_properties():
    t = 0.3
    assert float(fold_threshold(np.array([t]), t)[0]) == 0.5
    grid = np.linspace(0.0, 1.0, 1001)
    folded = fold_threshold(grid, t)
    assert folded[0] == 0.0 and folded[-1] == 1.0
    assert np.all(np.diff(folded) > 0)  # strictly monotone
    rng = np.random.default_rng(1)
    p = rng.uniform(size=5000)
    # Rounding folded probabilities the validator's way gives the tuned cut on raw ones.
    assert np.array_equal(np.round(fold_threshold(p, t)), (p > t).astype(float))


def test_fold_logits_matches_cut():
    t = 0.7
    z = np.linspace(-5, 5, 201)
    p = 1 / (1 + np.exp(-z))
    folded = 1 / (1 + np.exp(-fold_logits(z, t)))
    assert np.array_equal(folded > 0.5, p > t)

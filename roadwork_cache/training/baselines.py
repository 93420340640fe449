"""Linear baselines every table carries, so that the head has to earn its complexity."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from roadwork_cache.training.dataset import CacheData


def fit_baseline(data: CacheData, train_idx: np.ndarray, seed: int):
    """Logistic regression on the global view's features: the gain of the head is measured
    against it."""
    x = data.features["clean"][train_idx, 0].astype(np.float32)
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    lr.fit(scaler.transform(x), data.labels[train_idx])
    return scaler, lr

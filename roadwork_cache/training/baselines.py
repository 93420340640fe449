"""Fitting the linear probes every table carries, so that the head has to earn its
complexity: the global view alone, and all 12 views concatenated (DINOv3's linear probe)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from roadwork_cache.heads.probe import LinearProbe, ProbeConfig

GLOBAL_VIEW = (0,)
ALL_VIEWS = tuple(range(12))
PROBES = {"baseline": GLOBAL_VIEW, "probe": ALL_VIEWS}  # table name -> views


def fit_probe(
    features: np.ndarray, labels: np.ndarray, views: tuple[int, ...], seed: int, c: float = 1.0
) -> LinearProbe:
    """A LinearProbe on `views` of the rows given (float16 [n, V, D]), by scikit-learn's
    logistic regression on standardised features (L2, C = `c`)."""
    n, n_views, dim = features.shape
    x = features[:, list(views)].reshape(n, -1).astype(np.float32)
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(max_iter=2000, C=c, random_state=seed)
    lr.fit(scaler.transform(x), labels)
    probe = LinearProbe(ProbeConfig(in_dim=dim, n_views=n_views, views=views))
    with torch.no_grad():
        probe.mean.copy_(torch.from_numpy(scaler.mean_.astype(np.float32)))
        probe.scale.copy_(torch.from_numpy(np.maximum(scaler.scale_, 1e-12).astype(np.float32)))
        probe.weight.copy_(torch.from_numpy(lr.coef_[0].astype(np.float32)))
        probe.bias.copy_(torch.tensor([float(lr.intercept_[0])]))
    return probe.eval()

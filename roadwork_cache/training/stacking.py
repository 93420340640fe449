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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from roadwork_cache.heads import MetadataBatch
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.training.loop import autocast
from roadwork_cache.training.metrics import best_threshold, binary_metrics, fold_threshold

METHODS = ("mean", "weighted", "stacked")
LOGIT_CLIP = 30.0  # sigmoid(30) < 1 - 1e-13: keeps probabilities strictly inside (0, 1)


@torch.no_grad()
def head_logits(
    model: torch.nn.Module,
    features: np.ndarray,
    meta: MetadataBatch | None,
    device: torch.device,
    batch_size: int = 512,
) -> np.ndarray:
    """Binary logit ``logit_1 - logit_0`` [n] of a head (``log(p / (1 - p))`` of its softmax,
    without the precision lost by going through the probability)."""
    model.eval()
    feats = torch.as_tensor(features)
    out = []
    for start in range(0, len(feats), batch_size):
        x = feats[start : start + batch_size].to(device).float()
        m = meta.select(slice(start, start + batch_size)).to(device) if meta else None
        with autocast(device):
            logits = model(x, m).logits.float()
        out.append((logits[:, 1] - logits[:, 0]).cpu())
    if not out:
        return np.zeros(0, dtype=np.float64)
    return torch.cat(out).double().numpy()


@dataclass
class LogitNorm:
    """``(z - shift) / scale`` with the mean and sd of a model's logits on the rows it was
    trained on (no labels used). Fold models of one member end with different intercepts and
    spreads (early stopping picks different epochs); without this, pooling their out-of-fold
    logits mixes scales and the stack learns the folds instead of the members."""

    shift: float = 0.0
    scale: float = 1.0

    @classmethod
    def fit(cls, z: np.ndarray) -> LogitNorm:
        z = np.asarray(z, dtype=np.float64)
        return cls(float(z.mean()), max(float(z.std()), 1e-6))

    def apply(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, dtype=np.float64) - self.shift) / self.scale

    def raw_threshold(self, cut: float) -> float:
        """The probability threshold on the model's own softmax equivalent to `cut` on the
        normalised logit (so a fold folder also works on its own as a train-head bundle)."""
        return float(sigmoid(self.shift + self.scale * cut))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> LogitNorm:
        data = data or {}
        return cls(float(data.get("shift", 0.0)), float(data.get("scale", 1.0)))


def sigmoid(z: Any) -> np.ndarray:
    return expit(np.clip(np.asarray(z, dtype=np.float64), -LOGIT_CLIP, LOGIT_CLIP))


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def member_mcc(y: np.ndarray, z: np.ndarray) -> float:
    """MCC of one member's logits at its own MCC-best threshold."""
    prob = sigmoid(z)
    return binary_metrics(y, prob, best_threshold(y, prob))["mcc"]


@dataclass
class Combination:
    """``z = logits @ weights + bias`` over the members, in the order of ``members``."""

    method: str
    members: list[str]
    weights: list[float]
    bias: float = 0.0

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Member logits [n, M] -> combined logit [n]."""
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != len(self.weights):
            raise UserError(
                f"the {self.method} combination takes {len(self.weights)} member "
                f"logits per row, got an array of shape {list(z.shape)}"
            )
        return z @ np.asarray(self.weights, dtype=np.float64) + self.bias

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Combination:
        try:
            return cls(
                method=str(data["method"]),
                members=list(data["members"]),
                weights=[float(w) for w in data["weights"]],
                bias=float(data.get("bias", 0.0)),
            )
        except (KeyError, TypeError, ValueError):
            raise UserError("the meta-learner needs 'method', 'members' and 'weights'") from None


def fit_combination(
    method: str, logits: np.ndarray, y: np.ndarray, members: Sequence[str], seed: int = 0
) -> Combination:
    """Fit one combination on (out-of-fold) member logits [n, M] and labels [n]."""
    z = np.asarray(logits, dtype=np.float64)
    n_members = z.shape[1]
    if method == "mean":
        return Combination(method, list(members), [1.0 / n_members] * n_members)
    if method == "weighted":
        mcc = np.array([max(member_mcc(y, z[:, m]), 0.0) for m in range(n_members)])
        # Every member at chance: no evidence to weight by, so fall back to the mean.
        weights = mcc / mcc.sum() if mcc.sum() > 0 else np.full(n_members, 1.0 / n_members)
        return Combination(method, list(members), weights.tolist())
    if method == "stacked":
        # Logits are on one scale already; mild L2 (C=1) keeps correlated members stable.
        lr = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(z, y)
        return Combination(method, list(members), lr.coef_[0].tolist(), float(lr.intercept_[0]))
    raise UserError(f"unknown combination method {method!r} (known: {', '.join(METHODS)})")


def fold_combinations(
    method: str,
    logits: np.ndarray,
    y: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    members: Sequence[str],
    seed: int = 0,
) -> list[Combination]:
    """One combination per fold, each fitted on the other folds' rows."""
    return [fit_combination(method, logits[train], y[train], members, seed) for train, _ in folds]


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


def fit_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising the binary NLL of ``sigmoid(z / T)`` (searched on log T)."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        # log(1 + exp(-s)) for y = 1 and log(1 + exp(s)) for y = 0, computed stably.
        return float(np.mean(np.logaddexp(0.0, np.where(y > 0.5, -s, s))))

    res = minimize_scalar(nll, bounds=(math.log(1e-2), math.log(1e2)), method="bounded")
    return float(math.exp(res.x))


@dataclass
class Calibration:
    """Logit -> ``fold_threshold(sigmoid(z / T), t*)``: calibrated, with 0.5 as the cut."""

    temperature: float = 1.0
    threshold: float = 0.5

    def prob(self, z: np.ndarray) -> np.ndarray:
        """Temperature-scaled probability, before folding."""
        return sigmoid(np.asarray(z, dtype=np.float64) / self.temperature)

    def folded(self, z: np.ndarray) -> np.ndarray:
        return fold_threshold(self.prob(z), self.threshold)

    def cut(self) -> float:
        """The logit above which a row is positive (``z > cut`` iff folded > 0.5)."""
        return self.temperature * logit(self.threshold)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def calibrate(z: np.ndarray, y: np.ndarray, temperature: bool = True) -> Calibration:
    """Fit T (optional) and then the MCC-best threshold on the calibrated probabilities."""
    t = fit_temperature(z, y) if temperature else 1.0
    cal = Calibration(temperature=t)
    cal.threshold = best_threshold(y, cal.prob(z))
    return cal


def cross_fitted_cuts(
    z: np.ndarray, y: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """Per-row logit cut where each fold's cut is the MCC-best one on the other folds: an
    honest way to let every model re-tune its threshold to a new (target) distribution."""
    cuts = np.zeros(len(z), dtype=np.float64)
    for train, val in folds:
        cuts[val] = logit(best_threshold(y[train], sigmoid(z[train])))
    return cuts

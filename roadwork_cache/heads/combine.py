"""What sits on top of heads at inference: logit normalisation, the linear combination of
ensemble members, temperature and the folded threshold.

Every combination is a linear map of member logits, ``z = Z @ weights + bias``, so it is a
handful of numbers in JSON (never a pickled estimator). These are the *applied* forms: they
need numpy only, so a deployed model loads without scikit-learn or scipy. Fitting them is
training's job (`roadwork_cache.training.stacking`).

The validator cuts the returned probability at 0.5; `fold_threshold` maps the cut tuned on
validation onto 0.5, so that the deployed output can be cut there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from roadwork_cache.runtime.errors import UserError

LOGIT_CLIP = 30.0  # sigmoid(30) < 1 - 1e-13: keeps probabilities strictly inside (0, 1)


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
    z = np.clip(np.asarray(z, dtype=np.float64), -LOGIT_CLIP, LOGIT_CLIP)
    e = np.exp(-np.abs(z))  # never overflows: the two branches of the logistic function
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


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


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 < t < 1.0:
        raise UserError(f"threshold must lie strictly between 0 and 1, got {threshold}.")
    return t


def fold_threshold(prob: Any, threshold: float) -> np.ndarray:
    """Map [0, 1] onto [0, 1] monotonically so that ``threshold`` lands on 0.5.

    Piecewise linear: [0, t] -> [0, 0.5] and [t, 1] -> [0.5, 1]. The validator cuts the
    returned value at 0.5, so folding lets it apply the cut tuned on validation:
    ``folded > 0.5`` exactly when ``prob > t`` (up to float rounding for scores within a few
    ulps of t; ``best_threshold`` returns midpoints, far from any score).
    """
    t = _check_threshold(threshold)
    p = np.asarray(prob, dtype=np.float64)
    if np.any(~np.isfinite(p)) or np.any((p < 0.0) | (p > 1.0)):
        raise UserError("probabilities must be finite and lie in [0, 1].")
    return np.where(p <= t, 0.5 * p / t, 0.5 + 0.5 * (p - t) / (1.0 - t))


def fold_logits(logits: Any, threshold: float) -> np.ndarray:
    """Shift binary logits by ``-logit(threshold)`` so that ``sigmoid`` of the result is 0.5
    exactly where the probability was ``threshold``.

    This is a different monotone map from ``fold_threshold`` (a shift in logit space, smooth
    and calibration-shape preserving, versus piecewise linear in probability space) with the
    same decisions; use it when a model exports logits, e.g. after temperature scaling.
    """
    t = _check_threshold(threshold)
    return np.asarray(logits, dtype=np.float64) - math.log(t / (1.0 - t))

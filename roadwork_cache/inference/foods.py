"""FOODS test-time augmentation, our definition (docs/design.md §8).

A TTA variant that lands far from anything the head saw in training (a corner crop that
lost the cones, a zoom that turned a barrier into a blur) gives a probability worth less
than one that looks like a training image. FOODS measures that:

1. fit the mean and a Ledoit-Wolf shrunk covariance of the head embeddings of the training
   rows' clean features (shrinkage keeps the inverse stable when the embedding has more
   dimensions than the data can pin down);
2. for each image, the distance d_t of each candidate variant's head embedding to that
   distribution (Mahalanobis, or Euclidean to the mean);
3. keep the closest `keep` fraction of the candidates (at least one);
4. weights softmax(-d / temperature) over the kept ones (temperature 1 is the definition);
5. the image's probability is the weighted mean of the variants' probabilities (already
   threshold-folded by the bundle, so 0.5 stays the cut).

Statistics and settings travel with a model as `foods.safetensors` (tensors plus JSON
metadata, never a pickle), so `roadwork predict --tta` and the detector weight their
on-the-fly variants exactly as `roadwork tta` did on the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roadwork_cache.runtime.errors import UserError

DISTANCES = ("mahalanobis", "euclidean")
STATS_FILE = "foods.safetensors"
FORMAT = "roadwork-foods-v1"


@dataclass(frozen=True)
class FoodsSettings:
    keep: float = 0.8  # fraction of the candidates kept, closest first
    distance: str = "mahalanobis"
    temperature: float = 1.0  # softmax(-d / temperature)

    def check(self) -> FoodsSettings:
        if not 0.0 < self.keep <= 1.0:
            raise UserError(f"--keep must lie in (0, 1], got {self.keep}")
        if self.distance not in DISTANCES:
            raise UserError(f"unknown distance {self.distance!r}; choose {' or '.join(DISTANCES)}")
        if not self.temperature > 0.0:
            raise UserError(f"--temperature must be positive, got {self.temperature}")
        return self


@dataclass
class FoodsStats:
    """The training embedding distribution: mean [E] and precision (inverse covariance)."""

    mean: np.ndarray
    precision: np.ndarray
    shrinkage: float
    n_fit: int
    variants: list[str] = field(default_factory=list)  # the candidates FOODS weighs
    settings: FoodsSettings = field(default_factory=FoodsSettings)
    model_digest: str = ""  # which model's embeddings these are (see `model_digest`)

    @classmethod
    def fit(cls, embeddings: np.ndarray, **extra: Any) -> FoodsStats:
        from sklearn.covariance import LedoitWolf

        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise UserError(
                f"FOODS needs at least 2 training embeddings to fit a covariance, got {len(x)}"
            )
        lw = LedoitWolf(store_precision=True).fit(x)
        return cls(lw.location_, lw.precision_, float(lw.shrinkage_), len(x), **extra)

    def distances(self, embeddings: np.ndarray, kind: str | None = None) -> np.ndarray:
        """Distance of every embedding [..., E] to the training distribution -> [...]."""
        kind = kind or self.settings.distance
        diff = np.asarray(embeddings, dtype=np.float64) - self.mean
        if kind == "euclidean":
            return np.linalg.norm(diff, axis=-1)
        if kind != "mahalanobis":
            raise UserError(f"unknown distance {kind!r}; choose {' or '.join(DISTANCES)}")
        squared = np.einsum("...i,ij,...j->...", diff, self.precision, diff)
        return np.sqrt(np.maximum(squared, 0.0))  # rounding can dip a hair below zero


def n_kept(n_candidates: int, keep: float) -> int:
    """How many of T candidates FOODS keeps: round(keep * T), at least one."""
    return max(1, min(n_candidates, int(np.floor(keep * n_candidates + 0.5))))


def foods_weights(distances: np.ndarray, keep: float = 0.8, temperature: float = 1.0) -> np.ndarray:
    """Distances [n, T] -> weights [n, T]: softmax(-d / temperature) over the closest
    `keep` fraction of each row, zero elsewhere; each row sums to 1."""
    d = np.asarray(distances, dtype=np.float64)
    n, t = d.shape
    k = n_kept(t, keep)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]  # ties: earlier variant first
    kept = np.take_along_axis(d, order, axis=1)
    logits = -(kept - kept.min(axis=1, keepdims=True)) / temperature  # shift: no overflow
    soft = np.exp(logits)
    soft /= soft.sum(axis=1, keepdims=True)
    weights = np.zeros_like(d)
    np.put_along_axis(weights, order, soft, axis=1)
    return weights


def uniform_weights(n: int, t: int) -> np.ndarray:
    """Plain mean-TTA as weights: 1/T everywhere."""
    return np.full((n, t), 1.0 / t)


def weighted_probability(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-variant probabilities [n, T] and weights [n, T] -> probability [n] in [0, 1]."""
    out = (np.asarray(probs, np.float64) * weights).sum(axis=1) / weights.sum(axis=1)
    return np.clip(out, 0.0, 1.0)


def model_digest(config: dict[str, Any]) -> str:
    """A fingerprint of a model's config.json: stale statistics (the model was retrained
    into the same folder) are detected instead of silently used."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def save_stats(path: Path, stats: FoodsStats) -> Path:
    from safetensors.numpy import save_file

    meta = {
        "format": FORMAT,
        "variants": json.dumps(stats.variants),
        "settings": json.dumps(asdict(stats.settings)),
        "shrinkage": repr(stats.shrinkage),
        "n_fit": str(stats.n_fit),
        "model_digest": stats.model_digest,
    }
    tensors = {"mean": stats.mean.astype(np.float64), "precision": stats.precision}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def load_stats(path: Path) -> FoodsStats:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except Exception as exc:
        raise UserError(f"cannot read FOODS statistics {path}: {exc}") from None
    if meta.get("format") != FORMAT or {"mean", "precision"} - set(tensors):
        raise UserError(f"{path} is not a FOODS statistics file of this tool ({FORMAT})")
    return FoodsStats(
        mean=tensors["mean"],
        precision=tensors["precision"],
        shrinkage=float(meta.get("shrinkage", "nan")),
        n_fit=int(meta.get("n_fit", 0)),
        variants=json.loads(meta["variants"]),
        settings=FoodsSettings(**json.loads(meta["settings"])).check(),
        model_digest=meta.get("model_digest", ""),
    )

"""The deployment setting in which validation rows choose (docs/design.md §1, §7).

The validator sends a natix-rendered challenge of a uniformly drawn level, with no metadata,
labels drawn 50/50, and cuts at 0.5. So every choice made on validation rows (the epoch
early stopping keeps, the folded threshold, temperatures, member weights, the combination
method) scores the rows' cached `natix-*` variants pooled, each level weighing the same,
with every metadata field NULL and the two labels weighing the same. A cache without
`natix-*` variants falls back to `clean`, and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from roadwork_cache.training.metrics import balanced_weights, best_threshold, binary_metrics

N_LEVELS = 4
FALLBACK_WARNING = (
    "the cache has no natix-* variants: validation choices and headline scores use the clean "
    "images instead of the validator's challenges (add them with `roadwork extract ... "
    "--variants natix:4`)"
)


def natix_level(variant: str) -> int | None:
    """natix-K -> its validator level K % 4; anything else (composed TTA too) -> None."""
    kind, _, k = variant.partition("-")
    return int(k) % N_LEVELS if kind == "natix" and k.isdigit() else None


@dataclass(frozen=True)
class Selection:
    variants: tuple[str, ...]  # the cached variants validation rows are scored on
    weights: tuple[float, ...]  # per variant, summing to 1: each natix level weighs the same
    fallback: bool = False  # no natix-* in the cache: clean stands in

    @classmethod
    def for_variants(cls, available: Sequence[str]) -> Selection:
        natix = sorted(
            (v for v in available if natix_level(v) is not None), key=lambda v: int(v.split("-")[1])
        )
        if not natix:
            return cls(("clean",), (1.0,), fallback=True)
        levels = [natix_level(v) for v in natix]
        per_level = {lv: levels.count(lv) for lv in set(levels)}
        weights = [1.0 / len(per_level) / per_level[lv] for lv in levels]
        return cls(tuple(natix), tuple(weights))

    @property
    def name(self) -> str:
        return "clean" if self.fallback else "natix"

    def pool(self, y: np.ndarray, probs: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Labels [n] and one probability array [n] per selection variant -> pooled (y, p,
        weight) over every (row, variant), weighted for equal levels and balanced labels."""
        if len(probs) != len(self.variants):
            raise ValueError(f"{len(probs)} probability arrays for {len(self.variants)} variants")
        rows = balanced_weights(y)
        y_all = np.concatenate([y] * len(probs))
        p_all = np.concatenate([np.asarray(p, dtype=np.float64) for p in probs])
        w_all = np.concatenate([rows * w for w in self.weights])
        return y_all, p_all, w_all

    def threshold(self, y: np.ndarray, probs: Sequence[np.ndarray]) -> float:
        """The MCC-best cut in this setting."""
        return best_threshold(*self.pool(y, probs))

    def metrics(
        self, y: np.ndarray, probs: Sequence[np.ndarray], threshold: float = 0.5
    ) -> dict[str, float]:
        y_all, p_all, w_all = self.pool(y, probs)
        return binary_metrics(y_all, p_all, threshold, w_all)

    def at_best_cut(
        self, y: np.ndarray, probs: Sequence[np.ndarray]
    ) -> tuple[dict[str, float], float]:
        """(metrics at the MCC-best cut, that cut): early stopping maximises their MCC."""
        y_all, p_all, w_all = self.pool(y, probs)
        t = best_threshold(y_all, p_all, w_all)
        return binary_metrics(y_all, p_all, t, w_all), t

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "setting": f"{self.name} levels equal, metadata none, labels 50/50"}


@dataclass
class SelectionData:
    """A selection setting with the cached features it scores (one array per variant, every
    row of the cache), as a trainer takes it."""

    selection: Selection
    features: list[np.ndarray]

    @classmethod
    def single(cls, features: np.ndarray, name: str = "clean") -> SelectionData:
        """One feature array, labels balanced: for callers without a cache (tests, benches)."""
        return cls(Selection((name,), (1.0,), fallback=name == "clean"), [features])

    @classmethod
    def of(cls, selection: Selection, features: dict[str, np.ndarray]) -> SelectionData:
        return cls(selection, [features[v] for v in selection.variants])

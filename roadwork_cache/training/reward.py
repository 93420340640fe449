"""The expected validator reward, simulated the way the validator scores a miner.

A window is 100 challenges: each draws its label 50/50, a held-out row of that label, and a
natix level uniformly (then one cached render of that level); the answer is the model's
probability rounded at 0.5. The reward of the window is
`(0.5 * max(MCC over the 100, 0) + 0.5 * accuracy over the last 10) ** 3`. The simulation
runs many independent windows and reports their mean and 5th percentile: what a miner can
expect, and how bad a bad stretch gets. Only real rows are simulated: half the real
challenges are SDXL images generated from captions, which no cache holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from roadwork_cache.training.selection import natix_level

MCC_WINDOW = 100
ACC_WINDOW = 10
WINDOWS = 2000


def _mcc(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """MCC per row of [W, n] predictions; 0 where undefined."""
    tp = ((pred == 1) & (y == 1)).sum(1).astype(np.float64)
    tn = ((pred == 0) & (y == 0)).sum(1).astype(np.float64)
    fp = ((pred == 1) & (y == 0)).sum(1).astype(np.float64)
    fn = ((pred == 0) & (y == 1)).sum(1).astype(np.float64)
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (tp * tn - fp * fn) / denom, 0.0)


def simulate_rewards(
    labels: np.ndarray,
    probs: Sequence[np.ndarray],
    levels: Sequence[int],
    windows: int = WINDOWS,
    seed: int = 0,
) -> np.ndarray:
    """The reward of each of `windows` simulated windows. `probs[j]` [n] is the model's
    probability (0.5 is the cut) for every row rendered as variant j of level `levels[j]`."""
    y = np.asarray(labels).astype(np.int64)
    p = np.stack([np.asarray(q, dtype=np.float64) for q in probs])  # [V, n]
    rng = np.random.default_rng(seed)
    by_label = [np.flatnonzero(y == c) for c in (0, 1)]
    level_ids = sorted(set(levels))
    variants_of = [np.flatnonzero(np.asarray(levels) == lv) for lv in level_ids]
    shape = (windows, MCC_WINDOW)
    truth = rng.integers(0, 2, size=shape)
    row = np.where(
        truth == 1,
        by_label[1][rng.integers(0, len(by_label[1]), size=shape)],
        by_label[0][rng.integers(0, len(by_label[0]), size=shape)],
    )
    level = rng.integers(0, len(level_ids), size=shape)
    pick = rng.random(size=shape)
    variant = np.empty(shape, dtype=np.int64)
    for i, members in enumerate(variants_of):
        here = level == i
        variant[here] = members[(pick[here] * len(members)).astype(np.int64)]
    answer = (p[variant, row] > 0.5).astype(np.int64)
    mcc = np.maximum(_mcc(answer, truth), 0.0)
    acc = (answer[:, -ACC_WINDOW:] == truth[:, -ACC_WINDOW:]).mean(1)
    return (0.5 * mcc + 0.5 * acc) ** 3


def expected_reward(
    labels: np.ndarray,
    probs: dict[str, np.ndarray],
    windows: int = WINDOWS,
    seed: int = 0,
) -> dict[str, Any]:
    """{"mean", "p5", "windows", "rows", "setting"} from per-variant probabilities of the
    held-out rows: the natix-* variants when there are any (levels drawn uniformly), else
    clean. Without both labels among the rows: mean and p5 are None."""
    y = np.asarray(labels)
    natix = [v for v in probs if natix_level(v) is not None]
    names = natix or ["clean"]
    out: dict[str, Any] = {
        "windows": windows,
        "rows": int(len(y)),
        "setting": "natix levels uniform" if natix else "clean (no natix)",
    }
    if len(np.unique(y)) < 2:
        return {**out, "mean": None, "p5": None}
    levels = [natix_level(v) if natix else 0 for v in names]
    rewards = simulate_rewards(y, [probs[v] for v in names], levels, windows, seed)
    return {**out, "mean": float(rewards.mean()), "p5": float(np.percentile(rewards, 5))}

"""Scoring trained models on the cache: the rows of every table (docs/design.md §7).

A model here is a pair of functions over cached features: its own probability (`raw`) and
what it deploys (`deployed`: the threshold tuned in the selection setting folded in, so 0.5
is the cut). Every row is scored at 0.5, labels balanced 50/50 (the validator draws them so),
natix levels weighing the same; `threshold_kind` "0.5" is the raw output, "tuned" the
deployed one. The expected reward is simulated from the deployed natix outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from roadwork_cache.heads import MetadataBatch
from roadwork_cache.training.dataset import CacheData
from roadwork_cache.training.reward import expected_reward
from roadwork_cache.training.selection import Selection

Predict = Callable[[np.ndarray, MetadataBatch | None], np.ndarray]
METADATA = ("none", "all")


@dataclass
class ScoredModel:
    name: str
    raw: Predict  # features [n, V, D], metadata or None -> probability [n]
    deployed: Predict  # the same, with the tuned threshold folded in: 0.5 is the cut
    threshold: float  # the tuned threshold (on `raw`)
    metadata: bool = True  # reads metadata (rows with every field set are scored too)


@dataclass
class Evaluation:
    rows: list[dict[str, Any]]  # one per (model, set, variant group, metadata, threshold kind)
    raw: dict[tuple[str, str, str], np.ndarray]  # (model, variant, metadata) -> [N] over rows
    rewards: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # model, set

    def row(
        self,
        model: str,
        set_name: str,
        variant: str,
        metadata: str = "none",
        threshold_kind: str = "tuned",
    ) -> dict[str, Any] | None:
        for r in self.rows:
            if (r["model"], r["set"], r["variant"], r["metadata"], r["threshold_kind"]) == (
                model,
                set_name,
                variant,
                metadata,
                threshold_kind,
            ):
                return r
        return None


def variant_groups(variants: list[str]) -> dict[str, Selection]:
    """'clean' alone, and every cached natix-* pooled with equal levels (when there are)."""
    groups = {"clean": Selection(("clean",), (1.0,), fallback=True)}
    natix = Selection.for_variants(variants)
    if not natix.fallback:
        groups["natix"] = natix
    return groups


def evaluate(
    models: list[ScoredModel],
    data: CacheData,
    meta: MetadataBatch,
    sets: dict[str, np.ndarray],
) -> Evaluation:
    """Rows for every model, set, variant group and metadata setting, and the expected
    reward of each model on each set (deployed outputs, metadata NULL)."""
    groups = variant_groups(list(data.features))
    needed = sorted({v for g in groups.values() for v in g.variants})
    raw: dict[tuple[str, str, str], np.ndarray] = {}
    deployed: dict[tuple[str, str, str], np.ndarray] = {}
    for model in models:
        for variant in needed:
            for m in METADATA if model.metadata else ("none",):
                batch = meta if m == "all" else None
                feats = data.features[variant]
                raw[(model.name, variant, m)] = model.raw(feats, batch)
                deployed[(model.name, variant, m)] = model.deployed(feats, batch)
    rows: list[dict[str, Any]] = []
    rewards: dict[str, dict[str, dict[str, Any]]] = {}
    for model in models:
        for set_name, idx in sets.items():
            if len(idx) == 0:
                continue
            y = data.labels[idx]
            for group, setting in groups.items():
                for m in METADATA if model.metadata else ("none",):
                    for kind, probs in (("0.5", raw), ("tuned", deployed)):
                        arrays = [probs[(model.name, v, m)][idx] for v in setting.variants]
                        rows.append(
                            {
                                "model": model.name,
                                "set": set_name,
                                "variant": group,
                                "metadata": m,
                                "threshold_kind": kind,
                                "weighting": "balanced",
                                "positive_rate": float(y.mean()),
                                **setting.metrics(y, arrays, 0.5),
                                "threshold": 0.5 if kind == "0.5" else model.threshold,
                            }
                        )
            reward_probs = {v: deployed[(model.name, v, "none")][idx] for v in needed}
            rewards.setdefault(model.name, {})[set_name] = expected_reward(y, reward_probs)
    return Evaluation(rows, raw, rewards)


def headline(evaluation: Evaluation, model: str, sets: list[str]) -> dict[str, Any] | None:
    """The deployment figure of `model`: natix (or clean), no metadata, deployed output, on
    the first of `sets` that has labelled rows, with its expected reward."""
    for set_name in sets:
        for group in ("natix", "clean"):
            r = evaluation.row(model, set_name, group)
            if r is not None:
                reward = evaluation.rewards.get(model, {}).get(set_name, {})
                return {
                    "model": model,
                    "set": set_name,
                    "variant": group,
                    "mcc": r["mcc"],
                    "accuracy": r["accuracy"],
                    "auc": r["auc"],
                    "n": r["n"],
                    "expected_reward": {"mean": reward.get("mean"), "p5": reward.get("p5")},
                }
    return None

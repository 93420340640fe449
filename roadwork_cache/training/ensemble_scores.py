"""Scoring an ensemble's models and choosing what to deploy.

Every member and combination is scored on the out-of-fold rows (cross-fitted cuts), on the
test rows (the cut fitted on every OOF row) and on the target (cross-fitted cuts), per
variant and metadata setting, labels balanced 50/50 and natix levels weighing the same; each
also gets the validator's expected reward. The DoRA-adapted ensemble is deployed only where
it beats the plain one on the target, in the selection setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from roadwork_cache.heads import MetadataBatch
from roadwork_cache.heads.combine import Calibration, sigmoid
from roadwork_cache.training.combining import Combined, cross_fitted_row_cuts, pool
from roadwork_cache.training.dataset import metadata_batch
from roadwork_cache.training.dora_folds import DoraRun
from roadwork_cache.training.members import CLEAN, METAS, MemberResult
from roadwork_cache.training.plan import Prepared
from roadwork_cache.training.reward import expected_reward
from roadwork_cache.training.selection import Selection
from roadwork_cache.training.stacking import METHODS, calibrate
from roadwork_cache.training.targets import TargetSet


@dataclass
class Scored:
    """One model's logits on a set, per key, with the logit cut (scalar or per row)."""

    logits: dict[str, np.ndarray]
    cut: float | np.ndarray

    def deployed(self, key: str) -> np.ndarray:
        """The 0.5-cut probability of one key: sigmoid(z - cut) decides as z > cut does."""
        cut = np.broadcast_to(np.asarray(self.cut, dtype=np.float64), self.logits[key].shape)
        return sigmoid(self.logits[key] - cut)


def score_rows(
    model: str, set_name: str, scored: Scored, y: np.ndarray, variants: list[str]
) -> list[dict[str, Any]]:
    """Metric rows per variant and metadata setting, plus 'natix' (every natix-* level
    pooled, each weighing the same, as the validator draws them); labels balanced."""
    groups = [(v, Selection((v,), (1.0,))) for v in variants]
    natix = Selection.for_variants(variants)
    if not natix.fallback:
        groups.append(("natix", natix))
    rows = []
    for meta in METAS:
        for name, setting in groups:
            keys = [f"{v}:{meta}" for v in setting.variants]
            if not all(k in scored.logits for k in keys):
                continue
            m = setting.metrics(y, [scored.deployed(k) for k in keys], 0.5)
            rows.append(
                {
                    "model": model,
                    "set": set_name,
                    "variant": name,
                    "metadata": meta,
                    "weighting": "balanced",
                    **m,
                }
            )
    return rows


def entry_reward(scored: Scored, y: np.ndarray, variants: list[str]) -> dict[str, Any]:
    keys = {v: f"{v}:none" for v in variants if f"{v}:none" in scored.logits}
    return expected_reward(y, {v: scored.deployed(k) for v, k in keys.items()})


def target_scored(logits: dict[str, np.ndarray], target: TargetSet) -> Scored:
    """Scored on the target with cross-fitted cuts: every model may re-tune its threshold to
    the target, honestly, so adaptation must beat recalibration to count."""
    return Scored(
        logits, cross_fitted_row_cuts(logits, target.labels, target.folds, target.selection)
    )


def score_entries(
    p: Prepared, results: dict[str, MemberResult], c: Combined
) -> dict[str, dict[str, Scored]]:
    """Members and combinations on the OOF rows (cross-fitted cuts), the test rows (the cut
    fitted on every OOF row, as deployed) and the target (cross-fitted cuts)."""
    entries: dict[str, dict[str, Scored]] = {}
    for i, n in enumerate(p.names):
        entries[n] = {
            "oof": Scored(results[n].oof, c.member_cuts[n]),
            "test": Scored(results[n].test, c.member_cal[n].cut()),
        }
        if p.target is not None:
            entries[n]["target"] = target_scored(
                {k: v[:, i] for k, v in c.z_target.items()}, p.target
            )
    for m in METHODS:
        entries[m] = {
            "oof": Scored(c.oof[m], c.oof_cuts[m]),
            "test": Scored({k: c.combos[m].apply(v) for k, v in c.z_test.items()}, c.cal[m].cut()),
        }
        if p.target is not None:
            entries[m]["target"] = target_scored(
                {k: c.combos[m].apply(v) for k, v in c.z_target.items()}, p.target
            )
    return entries


def swap_member(
    z: dict[str, np.ndarray], col: int, logits: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Member logits with one member's column replaced (by its DoRA-adapted bag)."""
    out = {k: v.copy() for k, v in z.items()}
    for k in out:
        out[k][:, col] = logits[k]
    return out


def add_dora_entries(entries: dict, p: Prepared, c: Combined, dora: DoraRun) -> None:
    target, col, combo = p.target, p.names.index(dora.member), c.combos[c.method]
    entries["dora"] = {"target": target_scored(dora.oof, target)}
    entries[f"{c.method}+dora"] = {
        "target": target_scored(
            {k: combo.apply(v) for k, v in swap_member(c.z_target, col, dora.oof).items()}, target
        )
    }
    if dora.test is not None:  # a separate target: what adaptation costs on the source's test
        pooled = pool(dora.oof, target.labels, target.selection)
        entries["dora"]["test"] = Scored(
            dora.test, calibrate(pooled.z, pooled.y, False, pooled.weight).cut()
        )
        entries[f"{c.method}+dora"]["test"] = Scored(
            {k: combo.apply(v) for k, v in swap_member(c.z_test, col, dora.test).items()},
            c.cal[c.method].cut(),
        )


@dataclass
class Deployment:
    kind: str  # "ensemble" or "ensemble+dora"
    reason: str
    calibration: Calibration
    calibration_set: str  # "oof" (source OOF rows) or "target" (cross-fitted target rows)
    calibration_logits: dict[str, np.ndarray]  # key -> logits of the calibration rows


def setting_mcc(scored: Scored, y: np.ndarray, selection: Selection) -> float:
    return selection.metrics(y, [scored.deployed(f"{v}:none") for v in selection.variants], 0.5)[
        "mcc"
    ]


def choose_deployment(p: Prepared, c: Combined, entries: dict, dora: DoraRun | None) -> Deployment:
    """The adapted ensemble only where DoRA beats the plain one on the target (both with
    cross-fitted cuts, in the selection setting); its temperature and threshold are then
    fitted on the target rows."""
    method = c.method
    plain = Deployment(
        "ensemble",
        f"{method} combination of {len(p.names)} members",
        c.cal[method],
        "oof",
        c.oof[method],
    )
    if dora is None:
        return plain
    y_t, setting = p.target.labels, p.target.selection
    before = setting_mcc(entries[method]["target"], y_t, setting)
    after = setting_mcc(entries[f"{method}+dora"]["target"], y_t, setting)
    dora.info.update(target_mcc_plain=before, target_mcc_adapted=after)
    if after <= before:
        plain.reason += (
            f"; DoRA folds did not help on the target ({after:+.3f} vs "
            f"{before:+.3f}), so they are reported, not deployed"
        )
        return plain
    logits = entries[f"{method}+dora"]["target"].logits
    pooled = pool(logits, y_t, setting)
    return Deployment(
        "ensemble+dora",
        f"DoRA folds raise the target MCC from {before:+.3f} to {after:+.3f}",
        calibrate(pooled.z, pooled.y, weight=pooled.weight),
        "target",
        logits,
    )


def metric_rows(
    p: Prepared, entries: dict[str, dict[str, Scored]]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every entry's metric rows, and its expected reward per set (metadata NULL)."""
    sets = {
        "oof": (p.y_pool, p.eval_variants),
        "test": (p.data.labels[p.test_idx], p.eval_variants),
    }
    if p.target is not None:
        sets["target"] = (p.target.labels, p.target.eval_variants)
    rows: list[dict[str, Any]] = []
    rewards: dict[str, dict[str, Any]] = {}
    for model_name, by_set in entries.items():
        for set_name, scored in by_set.items():
            y, variants = sets[set_name]
            if len(y):
                rows.extend(score_rows(model_name, set_name, scored, y, variants))
                rewards.setdefault(model_name, {})[set_name] = entry_reward(scored, y, variants)
    return rows, rewards


def bundle_rows(
    predict: Callable[[np.ndarray, MetadataBatch | None], np.ndarray],
    p: Prepared,
    set_name: str = "test",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The deployed model's rows on the test split, computed by the saved bundle's own
    `predict` (the probability it returns, cut at 0.5), and its expected reward, under
    `set_name` (the caller titles them in-sample when the model saw the test labels)."""
    idx = p.test_idx
    if len(idx) == 0:
        return [], {}
    meta = None  # probes only: none reads metadata
    if p.head_names:
        meta = metadata_batch(p.configs[p.head_names[0]], p.data).select(torch.from_numpy(idx))
    probs = {
        f"{v}:{m}": predict(p.data.features[v][idx], meta if m == "all" else None)
        for v in p.eval_variants
        for m in METAS
    }
    # Probabilities at a 0.5 cut are logits at a 0 cut: scored like every other entry.
    scored = Scored(
        {
            k: np.log(np.clip(v, 1e-12, 1)) - np.log(np.clip(1 - v, 1e-12, 1))
            for k, v in probs.items()
        },
        0.0,
    )
    y = p.data.labels[idx]
    rows = score_rows("deployed", set_name, scored, y, p.eval_variants)
    return rows, {set_name: entry_reward(scored, y, p.eval_variants)}


def prediction_columns(
    p: Prepared,
    results: dict[str, MemberResult],
    c: Combined,
    deployed_prob: np.ndarray,
    deploy: Deployment,
) -> None:
    """One row per cache row: member and combination logits (OOF on training rows), the
    deployed folded probability (what the bundle returns) and, on the calibration rows, the
    folded OOF probability of each selection variant the threshold was tuned on
    (`calibration_<variant>`)."""
    data, pool, test_idx = p.data, p.pool, p.test_idx
    n = len(data)
    set_of = np.full(n, "unlabelled", dtype=object)
    set_of[pool], set_of[test_idx] = "train", "test"  # train rows hold OOF logits
    cols: dict[str, Any] = {
        "id": data.ids,
        "set": set_of.tolist(),
        "label": [None if v < 0 else int(v) for v in data.labels],
    }
    for name in p.names:
        z = results[name].full.copy()
        z[pool] = results[name].oof[CLEAN]
        cols[name] = z
    for m in METHODS:
        z = np.full(n, np.nan)
        z[pool] = c.oof[m][CLEAN]
        z[test_idx] = c.combos[m].apply(c.z_test[CLEAN])
        cols[m] = z
    cols["deployed"] = deployed_prob
    for v in p.selection.variants:
        cal = np.full(n, np.nan)
        if deploy.calibration_set == "oof":
            cal[pool] = deploy.calibration.folded(deploy.calibration_logits[f"{v}:none"])
        cols[f"calibration_{v}"] = cal
    return cols


def target_columns(
    p: Prepared, c: Combined, entries: dict[str, dict[str, Scored]]
) -> dict[str, Any] | None:
    """A separate target's labelled rows: each model's metadata-free logit, clean (`name`)
    and per variant of the target's selection setting (`name_variant`)."""
    if p.target is None or not p.target.separate:
        return None
    cols: dict[str, Any] = {
        "id": [p.target.data.ids[i] for i in p.target.rows],
        "label": p.target.labels.tolist(),
    }
    for name, by_set in entries.items():
        if "target" in by_set:
            logits = by_set["target"].logits
            cols[name] = logits[CLEAN]
            for v in p.target.selection.variants:
                cols[f"{name}_{v}"] = logits[f"{v}:none"]
    return cols

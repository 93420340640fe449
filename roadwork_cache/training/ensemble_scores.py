"""Scoring an ensemble's models and choosing what to deploy.

Every member and combination is scored on the out-of-fold rows (at the cut tuned there), on
the test rows (same cut) and on the target (cross-fitted cuts), per variant and metadata
setting; the DoRA-adapted ensemble is deployed only where it beats the plain one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from roadwork_cache.heads.combine import Calibration, sigmoid
from roadwork_cache.training.combining import Combined
from roadwork_cache.training.dora_folds import DoraRun
from roadwork_cache.training.members import CLEAN, METAS, MemberResult
from roadwork_cache.training.metrics import binary_metrics
from roadwork_cache.training.plan import Prepared
from roadwork_cache.training.stacking import METHODS, calibrate, cross_fitted_cuts
from roadwork_cache.training.targets import TargetSet


@dataclass
class Scored:
    """One model's logits on a set, per key, with the logit cut (scalar or per row)."""

    logits: dict[str, np.ndarray]
    cut: float | np.ndarray


def score_rows(
    model: str, set_name: str, scored: Scored, y: np.ndarray, variants: list[str]
) -> list[dict[str, Any]]:
    """Metric rows per variant and metadata setting, plus 'natix' (every natix-* level
    pooled, as a validator mixes them)."""
    rows = []
    cut = np.broadcast_to(np.asarray(scored.cut, dtype=np.float64), y.shape)
    natix = [v for v in variants if v.startswith("natix-")]
    for meta in METAS:
        groups = [(v, [v]) for v in variants] + ([("natix", natix)] if natix else [])
        for name, members in groups:
            keys = [f"{v}:{meta}" for v in members if f"{v}:{meta}" in scored.logits]
            if not keys:
                continue
            z = np.concatenate([scored.logits[k] for k in keys])
            # z > cut is the decision; sigmoid(z - cut) keeps AUC and the 0.5 cut meaningful.
            prob = sigmoid(z - np.tile(cut, len(keys)))
            m = binary_metrics(np.tile(y, len(keys)), prob, 0.5)
            rows.append({"model": model, "set": set_name, "variant": name, "metadata": meta, **m})
    return rows


def target_scored(logits: dict[str, np.ndarray], target: TargetSet) -> Scored:
    """Scored on the target with cross-fitted cuts: every model may re-tune its threshold to
    the target, honestly, so adaptation must beat recalibration to count."""
    return Scored(logits, cross_fitted_cuts(logits[CLEAN], target.labels, target.folds))


def score_entries(
    p: Prepared, results: dict[str, MemberResult], c: Combined
) -> dict[str, dict[str, Scored]]:
    """Members and combinations on the OOF rows (cut tuned there), the test rows (same cut)
    and the target (cross-fitted cuts)."""
    entries: dict[str, dict[str, Scored]] = {}
    for i, n in enumerate(p.names):
        cut = c.member_cal[n].cut()
        entries[n] = {"oof": Scored(results[n].oof, cut), "test": Scored(results[n].test, cut)}
        if p.target is not None:
            entries[n]["target"] = target_scored(
                {k: v[:, i] for k, v in c.z_target.items()}, p.target
            )
    for m in METHODS:
        cut = c.cal[m].cut()
        entries[m] = {
            "oof": Scored(c.oof[m], cut),
            "test": Scored({k: c.combos[m].apply(v) for k, v in c.z_test.items()}, cut),
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
        entries["dora"]["test"] = Scored(
            dora.test, calibrate(dora.oof[CLEAN], target.labels, temperature=False).cut()
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
    calibration_logits: np.ndarray


def choose_deployment(p: Prepared, c: Combined, entries: dict, dora: DoraRun | None) -> Deployment:
    """The adapted ensemble only where DoRA beats the plain one on the target (both with
    cross-fitted cuts); its temperature and threshold are then fitted on the target rows."""
    method = c.method
    plain = Deployment(
        "ensemble",
        f"{method} combination of {len(p.names)} members",
        c.cal[method],
        "oof",
        c.oof[method][CLEAN],
    )
    if dora is None:
        return plain
    y_t = p.target.labels
    before = score_rows(method, "target", entries[method]["target"], y_t, ["clean"])[0]["mcc"]
    after = score_rows(method, "target", entries[f"{method}+dora"]["target"], y_t, ["clean"])[0][
        "mcc"
    ]
    dora.info.update(target_mcc_plain=before, target_mcc_adapted=after)
    if after <= before:
        plain.reason += (
            f"; DoRA folds did not help on the target ({after:+.3f} vs "
            f"{before:+.3f}), so they are reported, not deployed"
        )
        return plain
    z = entries[f"{method}+dora"]["target"].logits[CLEAN]
    return Deployment(
        "ensemble+dora",
        f"DoRA folds raise the target MCC from {before:+.3f} to {after:+.3f}",
        calibrate(z, y_t),
        "target",
        z,
    )


def metric_rows(p: Prepared, entries: dict[str, dict[str, Scored]]) -> list[dict[str, Any]]:
    sets = {
        "oof": (p.y_pool, p.eval_variants),
        "test": (p.data.labels[p.test_idx], p.eval_variants),
    }
    if p.target is not None:
        sets["target"] = (p.target.labels, p.target.eval_variants)
    rows: list[dict[str, Any]] = []
    for model_name, by_set in entries.items():
        for set_name, scored in by_set.items():
            y, variants = sets[set_name]
            if len(y):
                rows.extend(score_rows(model_name, set_name, scored, y, variants))
    return rows

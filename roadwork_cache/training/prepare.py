"""What every stage-two run decides before its first epoch, shared by `train-head` and
`ensemble`: which cached variants to train and score on, the metadata leakage audit and the
fields it drops, the head config, and the GPS sampling weights toward the target."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roadwork_cache.heads import HeadConfig
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.progress import console
from roadwork_cache.training.dataset import CacheData, load_cache_data, vocabularies
from roadwork_cache.training.leakage import FieldAudit, audit, format_audit_table, leaky_fields
from roadwork_cache.training.loop import TrainConfig
from roadwork_cache.training.sampler import (
    DEFAULT_BEYOND,
    DEFAULT_BRACKETS,
    gps_weights,
    share_within,
    target_centres,
)
from roadwork_cache.training.selection import FALLBACK_WARNING, Selection


@dataclass
class TrainHeadOptions:
    cache: Path
    out: Path
    head: dict[str, Any] = field(default_factory=dict)  # HeadConfig overrides
    train: TrainConfig = field(default_factory=TrainConfig)
    variants: list[str] | None = None  # None: every clean / aug-* / natix-* variant
    target: str | None = None  # cache folder or CSV of lat,lon; default: the test split
    gps_brackets: tuple[tuple[float, float], ...] = DEFAULT_BRACKETS
    gps_beyond: float = DEFAULT_BEYOND
    gps_k: int = 5
    val_fraction: float = 0.2
    leak_bound: float = 0.3
    allow_leaky: bool = False
    device: str = "auto"
    progress: bool = True
    overwrite: bool = False  # replace what --out holds (inference.run_folder / ensemble_folder)
    compare_mask_loss: bool = False  # also train the head without the mask losses


def train_variants(available: list[str], asked: list[str] | None) -> list[str]:
    if asked:
        return asked
    return [v for v in available if v == "clean" or v.startswith(("aug-", "natix-"))]


def read_target(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """GPS of the target set: another cache, or a CSV with lat and lon columns."""
    path = Path(spec)
    if (path / "zarr.json").is_file():
        data = load_cache_data(path, variants=[])
        return data.gps()
    if path.suffix.lower() == ".csv" and path.is_file():
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not {"lat", "lon"} <= set(rows[0]):
            raise UserError(f"target CSV {spec} needs 'lat' and 'lon' columns")
        return (
            np.array([float(r["lat"]) for r in rows]),
            np.array([float(r["lon"]) for r in rows]),
        )
    raise UserError(f"--target {spec} is neither a cache folder nor a CSV of lat,lon")


def audit_leakage(
    data: CacheData, rows: np.ndarray, opts: TrainHeadOptions
) -> tuple[list[FieldAudit], list[str]]:
    """The leakage audit on `rows`, printed; returns the audits and the leaky fields."""
    table = {k: [v[i] for i in rows] for k, v in data.audit_table().items()}
    audits = audit(table, data.labels[rows], bound=opts.leak_bound)
    console.print(format_audit_table(audits, opts.leak_bound))
    leaky = leaky_fields(audits)
    return audits, leaky


def head_config(data: CacheData, opts: TrainHeadOptions, leaky: list[str]) -> HeadConfig:
    asked = opts.head.get("in_dim")
    if asked is not None and asked != data.in_dim:
        preset = data.meta.backbone.get("preset")
        raise UserError(
            f"the head config's in_dim {asked} does not match the {data.in_dim}-d features of "
            f"cache {opts.cache} (made with backbone {preset})"
        )
    values: dict[str, Any] = {"in_dim": data.in_dim, **vocabularies(data)}
    if data.mask_grid and opts.train.loss.mask:
        values["mask_grid"] = data.mask_grid  # the coverage predictor of the mask loss
    asked_grid = opts.head.get("mask_grid")
    if asked_grid and asked_grid != data.mask_grid:
        raise UserError(
            f"the head config's mask_grid {asked_grid} does not match the cache's "
            f"{data.mask_grid or 'absent'} mask grid"
        )
    values.update(opts.head)
    cfg = HeadConfig.from_dict(values)
    dropped = [f for f in cfg.meta_fields if f in leaky]
    if dropped and not opts.allow_leaky:
        console.print(
            f"[yellow]dropping leaky metadata field(s) {', '.join(dropped)}; "
            "pass --allow-leaky-metadata to keep them"
        )
        cfg = HeadConfig.from_dict(
            {**cfg.to_dict(), "meta_fields": [f for f in cfg.meta_fields if f not in leaky]}
        )
    return cfg


def sampling_weights(
    data: CacheData, train_idx: np.ndarray, test_idx: np.ndarray, opts: TrainHeadOptions
) -> tuple[np.ndarray | None, dict[str, Any]]:
    lat, lon = data.gps()
    if opts.target and opts.target != "test":
        t_lat, t_lon = read_target(opts.target)
        source = opts.target
    else:
        t_lat, t_lon, source = lat[test_idx], lon[test_idx], "test split"
    ok = np.isfinite(t_lat) & np.isfinite(t_lon)
    if ok.sum() < opts.gps_k:
        console.print(f"GPS weighting off: the target ({source}) has {int(ok.sum())} GPS fixes")
        return None, {"enabled": False, "target": source}
    centres = target_centres(t_lat[ok], t_lon[ok], k=opts.gps_k, seed=opts.train.seed)
    weights = gps_weights(
        lat[train_idx], lon[train_idx], centres, opts.gps_brackets, opts.gps_beyond
    )
    before = share_within(lat[train_idx], lon[train_idx], centres, 100.0)
    after = share_within(lat[train_idx], lon[train_idx], centres, 100.0, weights)
    console.print(
        f"GPS weighting toward {source}: share of training draws within 100 km of a "
        f"target centre {before:.1%} -> {after:.1%}"
    )
    return weights, {
        "enabled": True,
        "target": source,
        "centres": centres.tolist(),
        "share_within_100km_before": before,
        "share_within_100km_after": after,
    }


def evaluation_variants(data: CacheData) -> list[str]:
    return [v for v in data.features if v == "clean" or v.startswith("natix-")]


def selection_for(data: CacheData) -> Selection:
    """The selection setting of this cache (training.selection); one warning on fallback."""
    selection = Selection.for_variants(list(data.features))
    if selection.fallback:
        console.print(f"[yellow]warning: {FALLBACK_WARNING}")
    return selection


def uses_masks(data: CacheData, opts: TrainHeadOptions) -> bool:
    """Whether training has mask losses: the cache has masks and a mask weight is not 0."""
    loss = opts.train.loss
    return bool(data.masks) and bool(loss.mask or loss.mask_pruning)


def describe_masks(data: CacheData, opts: TrainHeadOptions, variants: list[str]) -> dict:
    """What the run records (and prints) about the mask losses."""
    used = uses_masks(data, opts)
    info = {
        "used": used,
        "weight": opts.train.loss.mask if used else 0.0,
        "pruning_weight": opts.train.loss.mask_pruning if used else 0.0,
        "variants_with_masks": [v for v in variants if v in data.masks],
        "rows_with_mask": int(data.mask_present.sum()) if data.mask_present is not None else 0,
        "grid": data.mask_grid,
    }
    if used:
        console.print(
            f"mask losses: coverage weight {info['weight']}, pruning supervision weight "
            f"{info['pruning_weight']}; masks in {len(info['variants_with_masks'])} of "
            f"{len(variants)} training variant(s), {info['rows_with_mask']} rows with a mask"
        )
    elif opts.compare_mask_loss:
        raise UserError(
            "--compare-mask-loss needs masks of the training variants (roadwork extract "
            "--masks) and a mask loss weight above 0"
        )
    return info

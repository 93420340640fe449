"""`roadwork train-head`: train the stage-two head from the cache alone, honestly evaluated.

Read top to bottom: load the cache's ok rows, audit the metadata for label leakage and drop
leaky fields, split train / validation by video, weight the sampler toward the target GPS
distribution, train, then score the head and a logistic-regression baseline on validation
and test, on clean and validator-like (`natix-*`) variants, with and without metadata, at
0.5 and at the validation-tuned threshold. Everything lands in the run folder.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.table import Table
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from roadwork_cache import __version__
from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.heads.forward import head_outputs
from roadwork_cache.heads.io import save_weights
from roadwork_cache.runtime.devices import resolve_device
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.progress import console, progress_bar
from roadwork_cache.training.dataset import (
    CacheData,
    labelled_rows,
    load_cache_data,
    metadata_batch,
    random_backbone,
    vocabularies,
)
from roadwork_cache.training.leakage import audit, format_audit_table, leaky_fields
from roadwork_cache.training.loop import EpochLog, TrainConfig, Trainer
from roadwork_cache.training.metrics import best_threshold, binary_metrics
from roadwork_cache.training.sampler import gps_weights, share_within, target_centres
from roadwork_cache.training.splits import grouped_split

DEFAULT_BRACKETS = ((50.0, 5.0), (200.0, 2.5), (500.0, 1.0))


@dataclass
class TrainHeadOptions:
    cache: Path
    out: Path
    head: dict[str, Any] = field(default_factory=dict)  # HeadConfig overrides
    train: TrainConfig = field(default_factory=TrainConfig)
    variants: list[str] | None = None  # None: every clean / aug-* / natix-* variant
    target: str | None = None  # cache folder or CSV of lat,lon; default: the test split
    gps_brackets: tuple[tuple[float, float], ...] = DEFAULT_BRACKETS
    gps_beyond: float = 0.3
    gps_k: int = 5
    val_fraction: float = 0.2
    leak_bound: float = 0.3
    allow_leaky: bool = False
    device: str = "auto"
    progress: bool = True


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


def leakage(data: CacheData, rows: np.ndarray, opts: TrainHeadOptions) -> tuple[list, list[str]]:
    table = {k: [v[i] for i in rows] for k, v in data.audit_table().items()}
    audits = audit(table, data.labels[rows], bound=opts.leak_bound)
    console.print(format_audit_table(audits, opts.leak_bound))
    leaky = leaky_fields(audits)
    return audits, leaky


def head_config(data: CacheData, opts: TrainHeadOptions, leaky: list[str]) -> HeadConfig:
    asked = opts.head.get("in_dim")
    if asked is not None and asked != data.in_dim:
        preset = data.attrs.get("backbone", {}).get("preset")
        raise UserError(
            f"the head config's in_dim {asked} does not match the {data.in_dim}-d features of "
            f"cache {opts.cache} (made with backbone {preset})"
        )
    values: dict[str, Any] = {"in_dim": data.in_dim, **vocabularies(data)}
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
    if opts.target:
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


def evaluate(
    model: RoadworkHead,
    data: CacheData,
    meta,
    device: torch.device,
    sets: dict[str, np.ndarray],
    baseline: tuple[StandardScaler, LogisticRegression],
) -> tuple[list[dict[str, Any]], float, dict[str, np.ndarray]]:
    """Metric rows for every (set, variant, metadata, threshold); the tuned threshold is the
    MCC-best one on the clean validation rows without metadata: the deployment setting."""
    scaler, lr = baseline
    probs: dict[tuple, np.ndarray] = {}
    for variant in evaluation_variants(data):
        feats = data.features[variant]
        probs[("head", variant, "none")] = head_outputs(model, feats, None, device)[0]
        probs[("head", variant, "all")] = head_outputs(model, feats, meta, device)[0]
        global_view = scaler.transform(feats[:, 0].astype(np.float32))
        probs[("baseline", variant, "none")] = lr.predict_proba(global_view)[:, 1]
    val = sets["val"]
    y = data.labels
    tuned = {
        m: best_threshold(y[val], probs[(m, "clean", "none")][val]) for m in ("head", "baseline")
    }
    rows = []
    for (model_name, meta_name), group, members in evaluation_groups(probs):
        for set_name, idx in sets.items():
            if len(idx) == 0:
                continue
            # natix-K are K challenges of the same rows: scored together, as a validator
            # would see them over time.
            y_all = np.concatenate([y[idx]] * len(members))
            p_all = np.concatenate([probs[(model_name, v, meta_name)][idx] for v in members])
            for t_name, t in (("0.5", 0.5), ("tuned", tuned[model_name])):
                m = binary_metrics(y_all, p_all, t)
                rows.append(
                    {
                        "model": model_name,
                        "set": set_name,
                        "variant": group,
                        "metadata": meta_name,
                        "threshold_kind": t_name,
                        **m,
                    }
                )
    return rows, tuned["head"], {f"{k[0]}:{k[1]}:{k[2]}": v for k, v in probs.items()}


def evaluation_groups(probs: dict[tuple, np.ndarray]) -> list[tuple[tuple, str, list[str]]]:
    """((model, metadata), 'clean' | 'natix', [variants]) for every scored combination."""
    out = []
    keys = sorted(
        {(m, meta) for m, _, meta in probs}, key=lambda k: (k[0] != "head", k[1] != "none")
    )
    for model_name, meta_name in keys:
        variants = [v for m, v, meta in probs if m == model_name and meta == meta_name]
        out.append(((model_name, meta_name), "clean", ["clean"]))
        natix = sorted(v for v in variants if v.startswith("natix-"))
        if natix:
            out.append(((model_name, meta_name), "natix", natix))
    return out


def metrics_table(rows: list[dict[str, Any]], random_init: bool) -> Table:
    title = "train-head: metrics (metadata 'none' is what a validator sends)"
    if random_init:
        title += "\n[yellow]random backbone weights: this measures the machinery, not quality"
    table = Table(title=title)
    for col in (
        "model",
        "set",
        "variant",
        "metadata",
        "thr",
        "MCC",
        "acc",
        "prec",
        "rec",
        "F1",
        "AUC",
        "reward",
        "n",
    ):
        table.add_column(col, justify="right" if col not in ("model", "set", "variant") else "left")
    for r in rows:
        table.add_row(
            r["model"],
            r["set"],
            r["variant"],
            r["metadata"],
            f"{r['threshold']:.3f}",
            f"{r['mcc']:+.3f}",
            f"{r['accuracy']:.3f}",
            f"{r['precision']:.3f}",
            f"{r['recall']:.3f}",
            f"{r['f1']:.3f}",
            "-" if math.isnan(r["auc"]) else f"{r['auc']:.3f}",
            f"{r['reward']:.3f}",
            str(r["n"]),
        )
    return table


def fit_baseline(data: CacheData, train_idx: np.ndarray, seed: int):
    """Logistic regression on the global view's features: the gain of the head is measured
    against it."""
    x = data.features["clean"][train_idx, 0].astype(np.float32)
    scaler = StandardScaler().fit(x)
    lr = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    lr.fit(scaler.transform(x), data.labels[train_idx])
    return scaler, lr


def save_curve(history: list[EpochLog], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.epoch for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(epochs, [h.loss for h in history], label="train loss")
    ax[0].set_xlabel("epoch")
    ax[0].legend()
    ax[1].plot(epochs, [h.val_mcc for h in history], label="val MCC (no metadata)")
    ax[1].plot(epochs, [h.val_auc for h in history], label="val AUC (no metadata)")
    ax[1].set_xlabel("epoch")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_train_head(opts: TrainHeadOptions) -> dict[str, Any]:
    device = resolve_device(opts.device)
    torch.manual_seed(opts.train.seed)
    from roadwork_cache.store.cache import Cache

    available = Cache.open(opts.cache).variants()
    variants = train_variants(available, opts.variants)
    if "clean" not in variants:
        variants = ["clean", *variants]
    data = load_cache_data(opts.cache, variants)
    random_init = random_backbone(data)
    if random_init:
        console.print(
            "[yellow]warning: this cache was made with random backbone weights; "
            "scores demonstrate the machinery, not quality"
        )

    pool, test_idx = labelled_rows(data)
    split = data.split_names()
    tr, va = grouped_split(
        data.labels[pool], data.groups()[pool], opts.val_fraction, opts.train.seed, split[pool]
    )
    train_idx, val_idx = pool[tr], pool[va]
    console.print(
        f"rows: {len(train_idx)} train, {len(val_idx)} validation (grouped by video),"
        f" {len(test_idx)} test; variants for training: {', '.join(variants)}"
    )

    audits, leaky = leakage(data, train_idx, opts)
    config = head_config(data, opts, leaky)
    weights, gps_info = sampling_weights(data, train_idx, test_idx, opts)

    opts.out.mkdir(parents=True, exist_ok=True)
    meta = metadata_batch(config, data)
    model = RoadworkHead(config)
    trainer = Trainer(
        model,
        opts.train,
        [data.features[v] for v in variants],
        data.labels,
        meta,
        device,
        eval_features=data.features["clean"],
    )
    with progress_bar(disable=not opts.progress) as bar:
        task = bar.add_task("train-head", total=opts.train.epochs, rate="")

        def on_epoch(log: EpochLog) -> None:
            bar.update(task, advance=1, rate=f"loss {log.loss:.3f} val MCC {log.val_mcc:+.3f}")

        result = trainer.fit(train_idx, val_idx, weights, on_epoch)
    console.print(
        f"best epoch {result.best_epoch} (val MCC {result.best_val_mcc:+.3f}, "
        f"no metadata){'; stopped early' if result.stopped_early else ''}"
    )

    baseline = fit_baseline(data, train_idx, opts.train.seed)
    sets = {"val": val_idx, "test": test_idx}
    rows, threshold, probs = evaluate(model, data, meta, device, sets, baseline)
    table = metrics_table(rows, random_init)

    # ---- the run folder ---------------------------------------------------------------------
    save_weights(model, opts.out)
    run_config = {
        "kind": "train-head",
        "tool_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cache": str(Path(opts.cache).resolve()),
        "backbone": data.attrs.get("backbone"),
        "views": data.attrs.get("views"),
        "head": config.to_dict(),
        "train": opts.train.to_dict(),
        "variants": variants,
        "threshold": threshold,  # folded into predict's output so that 0.5 is the cut
        "leaky_fields": leaky,
        "allow_leaky_metadata": opts.allow_leaky,
        "gps": gps_info,
    }
    (opts.out / "config.json").write_text(json.dumps(run_config, indent=2))
    (opts.out / "audit.json").write_text(json.dumps([a.to_dict() for a in audits], indent=2))
    history = [h.__dict__ for h in result.history]
    metrics = {
        "best_epoch": result.best_epoch,
        "best_val_mcc": result.best_val_mcc,
        "threshold": threshold,
        "random_init_backbone": random_init,
        "rows": rows,
        "history": history,
    }
    (opts.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    set_of = np.full(len(data), "train", dtype=object)
    set_of[val_idx], set_of[test_idx] = "val", "test"
    set_of[data.labels < 0] = "unlabelled"
    columns = {
        "id": data.ids,
        "set": set_of.tolist(),
        "label": [None if v < 0 else int(v) for v in data.labels],
    }
    columns.update({k.replace(":", "_"): v for k, v in probs.items()})
    pq.write_table(pa.table(columns), opts.out / "predictions.parquet")
    save_curve(result.history, opts.out / "curve.png")
    return {"table": table, "metrics": metrics, "out": opts.out}

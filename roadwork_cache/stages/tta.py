"""`roadwork tta`: FOODS test-time augmentation from the cache, beside mean-TTA and no TTA.

Read top to bottom: load the model and check that the cache holds the features it was
trained on, pick the candidate variants (the clean image and every cached `tta-K`), fit
the FOODS statistics on the head embeddings of the training rows' clean features, score
every candidate of the rows asked for, weigh them three ways (clean only, plain mean,
FOODS), and write the predictions parquet, the metrics JSON and the statistics that let
`roadwork predict --tta` weigh its on-the-fly variants the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from roadwork_cache.inference.bundles import Bundle, load_bundle
from roadwork_cache.inference.foods import (
    STATS_FILE,
    FoodsSettings,
    FoodsStats,
    foods_weights,
    model_digest,
    n_kept,
    save_stats,
    uniform_weights,
    weighted_probability,
)
from roadwork_cache.reports.tables import tta_table, variant_table
from roadwork_cache.runtime.devices import resolve_device
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.progress import console, progress_bar
from roadwork_cache.runtime.version import __version__
from roadwork_cache.store.cache import Cache
from roadwork_cache.training.dataset import CacheData, load_cache_data
from roadwork_cache.training.metrics import binary_metrics
from roadwork_cache.views.variants import check_variant

METHODS = ("none", "mean", "foods")


@dataclass
class TtaOptions:
    cache: Path
    model: Path
    out: Path  # predictions parquet; the metrics JSON goes beside it
    split: str = "test"  # a split of the cache, or "all"
    variants: list[str] | None = None  # candidates; default clean + every cached tta-K
    settings: FoodsSettings = FoodsSettings()
    save_stats: bool = True  # write foods.safetensors into the model folder
    device: str = "auto"
    progress: bool = True


def candidate_variants(available: list[str], asked: list[str] | None) -> list[str]:
    if asked:
        for name in asked:
            check_variant(name)
        missing = [v for v in asked if v not in available]
        if missing:
            raise UserError(
                f"the cache has no variant {missing[0]!r} (it has: {', '.join(available)})"
            )
        return list(dict.fromkeys(asked))
    tta = sorted(
        (v for v in available if re.fullmatch(r"tta-\d+", v)), key=lambda v: int(v.split("-")[1])
    )
    if not tta:
        raise UserError(
            "the cache has no tta-K variants; add them with `roadwork extract "
            "SOURCE --cache CACHE --variants tta:8` (same backbone flags)"
        )
    return ["clean", *tta]


def check_cache_matches(
    cache_backbone: dict[str, Any], config: dict[str, Any], cache: Path, model: Path
) -> None:
    """The model must have been trained on this backbone's features (keys both record)."""
    have, want = cache_backbone, config.get("backbone") or {}
    for key in ("preset", "pool", "view_size", "feature_dim", "state_sha256", "weights_sha256"):
        if have.get(key) is not None and want.get(key) is not None and have[key] != want[key]:
            raise UserError(
                f"model {model} was trained on features with backbone {key} = {want[key]}, but "
                f"cache {cache} holds {key} = {have[key]}; use the cache the model was trained on"
            )


def reference_rows(data: CacheData, model: Path) -> tuple[np.ndarray, str]:
    """The training rows: those a train-head run marked 'train' in its predictions, else
    every row of the cache's train split (never the test split)."""
    path = model / "predictions.parquet"
    if path.is_file():
        table = pq.read_table(path)
        if {"id", "set"} <= set(table.column_names):
            train_ids = {
                i
                for i, s in zip(table["id"].to_pylist(), table["set"].to_pylist(), strict=True)
                if s == "train"
            }
            rows = np.array([i for i, rid in enumerate(data.ids) if rid in train_ids], int)
            if len(rows) >= 2:
                return rows, "the model's training rows"
    rows = np.flatnonzero(data.split_names() == "train")
    if len(rows) < 2:
        raise UserError(
            f"cache {data.root} has fewer than 2 rows in its train split to fit "
            "the FOODS statistics on"
        )
    return rows, "the cache's train split"


def eval_rows(data: CacheData, split: str) -> np.ndarray:
    names = data.split_names()
    if split == "all":
        return np.arange(len(data))
    rows = np.flatnonzero(names == split)
    if len(rows) == 0:
        have = ", ".join(sorted(set(names.tolist()) - {""})) or "none"
        raise UserError(
            f"cache {data.root} has no ok rows in split {split!r} (splits: {have}; "
            "or use --split all)"
        )
    return rows


def score_variants(
    bundle: Bundle, data: CacheData, rows: np.ndarray, variants: list[str], progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Folded probabilities [n, T] and head embeddings [n, T, E] of every candidate."""
    probs, embeds = [], []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("tta", total=len(variants), rate="")
        for name in variants:
            feats = data.features[name][rows]
            probs.append(bundle.predict(feats))
            embeds.append(bundle.embed(feats))
            bar.update(task, advance=1, rate=name)
    return np.stack(probs, axis=1), np.stack(embeds, axis=1)


def method_rows(labels: np.ndarray, probs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    known = labels >= 0
    if not known.any():
        return []
    return [{"method": m, **binary_metrics(labels[known], probs[m][known], 0.5)} for m in METHODS]


def run_tta(opts: TtaOptions) -> dict[str, Any]:
    settings = opts.settings.check()
    if opts.out.suffix.lower() != ".parquet":
        raise UserError(f"--out {opts.out} must be a .parquet file")
    device = resolve_device(opts.device)
    bundle = load_bundle(opts.model, device)
    cache = Cache.open(opts.cache)
    check_cache_matches(cache.meta.backbone, bundle.config, opts.cache, opts.model)
    variants = candidate_variants(cache.variants(), opts.variants)
    data = load_cache_data(opts.cache, list(dict.fromkeys(["clean", *variants])))
    random_init = bool((bundle.config.get("backbone") or {}).get("random_init"))
    if random_init:
        console.print(
            "[yellow]warning: this model sits on random backbone weights; scores "
            "demonstrate the machinery, not quality"
        )

    rows = eval_rows(data, opts.split)

    # ---- FOODS statistics from the training rows -----------------------------------------
    ref, ref_source = reference_rows(data, opts.model)
    stats = FoodsStats.fit(
        bundle.embed(data.features["clean"][ref]),
        variants=variants,
        settings=settings,
        model_digest=model_digest(bundle.config),
    )
    console.print(
        f"FOODS statistics: {len(ref)} rows ({ref_source}), "
        f"{stats.mean.shape[0]}-d embeddings, Ledoit-Wolf shrinkage "
        f"{stats.shrinkage:.3f}; {len(variants)} candidates, keep "
        f"{n_kept(len(variants), settings.keep)}, {settings.distance} distance"
    )

    # ---- three ways to combine the candidates ---------------------------------------------
    probs, embeds = score_variants(bundle, data, rows, variants, opts.progress)
    distances = stats.distances(embeds)
    weights = foods_weights(distances, settings.keep, settings.temperature)
    clean = (
        probs[:, variants.index("clean")]
        if "clean" in variants
        else bundle.predict(data.features["clean"][rows])
    )
    combined = {
        "none": clean,
        "mean": weighted_probability(probs, uniform_weights(*probs.shape)),
        "foods": weighted_probability(probs, weights),
    }
    labels = data.labels[rows]
    metrics = method_rows(labels, combined)
    by_variant = [
        {
            "variant": v,
            "mean_distance": float(distances[:, t].mean()),
            "kept_share": float((weights[:, t] > 0).mean()),
            "mean_weight": float(weights[:, t].mean()),
        }
        for t, v in enumerate(variants)
    ]

    # ---- outputs -----------------------------------------------------------------------------
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    split_names = data.split_names()[rows]
    columns: dict[str, Any] = {
        "id": [data.ids[i] for i in rows],
        "split": split_names.tolist(),
        "label": [None if v < 0 else int(v) for v in labels],
        "probability": combined["foods"],
        "probability_mean_tta": combined["mean"],
        "probability_no_tta": combined["none"],
    }
    for t, v in enumerate(variants):
        columns[f"prob_{v}"] = probs[:, t]
        columns[f"distance_{v}"] = distances[:, t]
        columns[f"weight_{v}"] = weights[:, t]
    pq.write_table(pa.table(columns), opts.out)
    stats_path = None
    if opts.save_stats:
        stats_path = save_stats(opts.model / STATS_FILE, stats)
    report = {
        "kind": "tta",
        "tool_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cache": str(Path(opts.cache).resolve()),
        "model": str(Path(opts.model).resolve()),
        "split": opts.split,
        "rows": int(len(rows)),
        "labelled_rows": int((labels >= 0).sum()),
        "variants": variants,
        "settings": asdict(settings),
        "kept_per_image": n_kept(len(variants), settings.keep),
        "fit": {
            "rows": int(len(ref)),
            "source": ref_source,
            "shrinkage": stats.shrinkage,
            "embedding_dim": int(stats.mean.shape[0]),
        },
        "random_init_backbone": random_init,
        "metrics": metrics,
        "by_variant": by_variant,
        "predictions": str(opts.out),
        "stats": str(stats_path) if stats_path else None,
    }
    metrics_path = opts.out.with_suffix(".metrics.json")
    metrics_path.write_text(json.dumps(report, indent=2, default=float))
    return {
        "metrics": report,
        "out": opts.out,
        "metrics_path": metrics_path,
        "stats_path": stats_path,
        "table": tta_table(metrics, opts.split, random_init) if metrics else None,
        "variant_table": variant_table(by_variant),
    }

"""`roadwork tta`: FOODS test-time augmentation from the cache, beside mean-TTA and no TTA.

Read top to bottom: load the model and check that the cache holds the features it was
trained on, plan the candidates, fit the FOODS statistics on the training rows' embeddings,
score every candidate of the rows asked for, weigh them three ways (no TTA, plain mean,
FOODS), and write the predictions parquet, the metrics JSON and the statistics that let
`roadwork predict --tta` weigh its on-the-fly variants the same way.

What a miner runs TTA on is the 224 px challenge, so the candidates of a row are its natix
challenges each with the TTA transforms applied to that challenge (`natix-L+tta-K`, from
`extract --variants natix:4+tta:8`), scored with the levels weighing the same and the labels
50/50. A cache without those falls back to transforms of the full image, and says so. A split
whose labels the model saw is titled in-sample.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from roadwork_cache.inference.bundles import Bundle, load_bundle, row_sets
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
from roadwork_cache.inference.head_folder import seen_splits
from roadwork_cache.reports.tables import tta_table, variant_table
from roadwork_cache.runtime.devices import resolve_device
from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.files import write_json
from roadwork_cache.runtime.progress import console, progress_bar
from roadwork_cache.runtime.version import __version__
from roadwork_cache.store.cache import Cache
from roadwork_cache.training.dataset import CacheData, load_cache_data
from roadwork_cache.training.reward import expected_reward
from roadwork_cache.training.selection import Selection
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


FALLBACK_WARNING = (
    "the cache has no natix-L+tta-K variants: the candidates are transforms of the full image, "
    "not of the 224 px challenge a miner receives (add them with `roadwork extract ... "
    "--variants natix:4+tta:8`)"
)


@dataclass
class TtaPlan:
    transforms: list[str]  # what predict applies to a received image: clean, tta-K, ...
    groups: dict[str, list[str]]  # challenge variant -> its cached candidates, transform order
    challenges: bool  # natix challenges (True), or the full image (the fallback)

    @property
    def selection(self) -> Selection:
        if self.challenges:
            return Selection.for_variants(list(self.groups))
        return Selection(("clean",), (1.0,), fallback=True)

    @property
    def variants(self) -> list[str]:
        return sorted({v for vs in self.groups.values() for v in vs})


def tta_suffix(variant: str) -> int | None:
    m = re.fullmatch(r"(?:natix-\d+\+)?tta-(\d+)", variant)
    return int(m.group(1)) if m else None


def plan_candidates(available: list[str], asked: list[str] | None) -> TtaPlan:
    if asked:
        for name in asked:
            check_variant(name)
        missing = [v for v in asked if v not in available]
        if missing:
            raise UserError(
                f"the cache has no variant {missing[0]!r} (it has: {', '.join(available)})"
            )
    pool = list(dict.fromkeys(asked)) if asked else available
    composed = [v for v in pool if "+" in v]
    if composed:
        challenges = sorted({v.split("+")[0] for v in composed}, key=lambda v: int(v[6:]))
        ks = sorted(
            set.intersection(
                *({tta_suffix(v) for v in composed if v.startswith(c + "+")} for c in challenges)
            )
        )
        missing = [c for c in challenges if c not in available]
        if missing:
            raise UserError(f"the cache has {missing[0]}+tta-K but not {missing[0]} itself")
        groups = {c: [c, *(f"{c}+tta-{k}" for k in ks)] for c in challenges}
        return TtaPlan(["clean", *(f"tta-{k}" for k in ks)], groups, True)
    tta = sorted((v for v in pool if tta_suffix(v) is not None), key=tta_suffix)
    if not tta and not asked:
        raise UserError(
            "the cache has no TTA variants; add them with `roadwork extract SOURCE --cache "
            "CACHE --variants natix:4+tta:8` (same backbone flags)"
        )
    transforms = list(dict.fromkeys(pool)) if asked else ["clean", *tta]
    return TtaPlan(transforms, {"clean": transforms}, False)


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
    """The training rows: those the model's folder marks 'train' in its predictions, else
    every row of the cache's train split (never the test split)."""
    sets = row_sets(model)
    rows = np.array([i for i, rid in enumerate(data.ids) if sets.get(str(rid)) == "train"], int)
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
    bundle: Bundle, data: CacheData, rows: np.ndarray, variants: list[str], bar, task
) -> tuple[np.ndarray, np.ndarray]:
    """Folded probabilities [n, T] and head embeddings [n, T, E] of every candidate."""
    probs, embeds = [], []
    for name in variants:
        feats = data.features[name][rows]
        probs.append(bundle.predict(feats))
        embeds.append(bundle.embed(feats))
        bar.update(task, advance=1, rate=name)
    return np.stack(probs, axis=1), np.stack(embeds, axis=1)


def method_rows(
    labels: np.ndarray, combined: dict[str, dict[str, np.ndarray]], plan: TtaPlan
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per method: metrics pooled over the challenges (levels equal, labels 50/50) at 0.5,
    and the expected validator reward of its answers."""
    known = labels >= 0
    if not known.any():
        return [], {}
    setting, y = plan.selection, labels[known]
    rows, rewards = [], {}
    for m in METHODS:
        probs = [combined[c][m][known] for c in setting.variants]
        rows.append({"method": m, "weighting": "balanced", **setting.metrics(y, probs, 0.5)})
        rewards[m] = expected_reward(y, dict(zip(setting.variants, probs, strict=True)))
    return rows, rewards


def run_tta(opts: TtaOptions) -> dict[str, Any]:
    settings = opts.settings.check()
    if opts.out.suffix.lower() != ".parquet":
        raise UserError(f"--out {opts.out} must be a .parquet file")
    device = resolve_device(opts.device)
    bundle = load_bundle(opts.model, device)
    cache = Cache.open(opts.cache)
    check_cache_matches(cache.meta.backbone, bundle.config, opts.cache, opts.model)
    plan = plan_candidates(cache.variants(), opts.variants)
    data = load_cache_data(opts.cache, list(dict.fromkeys(["clean", *plan.variants])))
    random_init = bool((bundle.config.get("backbone") or {}).get("random_init"))
    if random_init:
        console.print(
            "[yellow]warning: this model sits on random backbone weights; scores "
            "demonstrate the machinery, not quality"
        )
    rows = eval_rows(data, opts.split)
    if not plan.challenges:  # said once every argument has been checked
        console.print(f"[yellow]warning: {FALLBACK_WARNING}")
    seen = seen_splits(bundle.config.get("seen"), opts.cache)
    splits_scored = set(data.split_names()[rows].tolist())
    in_sample = bool(seen & splits_scored)
    if in_sample:
        console.print(
            f"[yellow]in-sample: the model was fitted on labelled rows of split(s) "
            f"{', '.join(sorted(seen & splits_scored))}; these scores are not held-out"
        )

    # ---- FOODS statistics from the training rows, rendered as the candidates are ------------
    ref, ref_source = reference_rows(data, opts.model)
    reference = np.concatenate([bundle.embed(data.features[c][ref]) for c in plan.groups])
    stats = FoodsStats.fit(
        reference,
        variants=plan.transforms,
        settings=settings,
        model_digest=model_digest(bundle.config),
    )
    T = len(plan.transforms)
    console.print(
        f"FOODS statistics: {len(ref)} rows ({ref_source}) x {len(plan.groups)} "
        f"{'challenge(s)' if plan.challenges else 'image'}, {stats.mean.shape[0]}-d embeddings, "
        f"Ledoit-Wolf shrinkage {stats.shrinkage:.3f}; {T} candidates, keep "
        f"{n_kept(T, settings.keep)}, {settings.distance} distance"
    )

    # ---- three ways to combine the candidates, per challenge ------------------------------
    combined: dict[str, dict[str, np.ndarray]] = {}
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    with progress_bar(disable=not opts.progress) as bar:
        task = bar.add_task("tta", total=len(plan.groups) * T, rate="")
        for challenge, candidates in plan.groups.items():
            probs, embeds = score_variants(bundle, data, rows, candidates, bar, task)
            distances = stats.distances(embeds)
            weights = foods_weights(distances, settings.keep, settings.temperature)
            combined[challenge] = {
                "none": probs[:, 0],
                "mean": weighted_probability(probs, uniform_weights(*probs.shape)),
                "foods": weighted_probability(probs, weights),
            }
            parts[challenge] = (probs, distances, weights)
    labels = data.labels[rows]
    metrics, rewards = method_rows(labels, combined, plan)
    by_variant = [
        {
            "variant": v,
            "mean_distance": float(np.mean([parts[c][1][:, t].mean() for c in parts])),
            "kept_share": float(np.mean([(parts[c][2][:, t] > 0).mean() for c in parts])),
            "mean_weight": float(np.mean([parts[c][2][:, t].mean() for c in parts])),
        }
        for t, v in enumerate(plan.transforms)
    ]

    # ---- outputs: one row per (row, challenge) ----------------------------------------------
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    columns: dict[str, Any] = {
        "id": [data.ids[i] for i in rows] * len(plan.groups),
        "split": data.split_names()[rows].tolist() * len(plan.groups),
        "label": [None if v < 0 else int(v) for v in labels] * len(plan.groups),
        "challenge": [c for c in plan.groups for _ in range(n)],
        "probability": np.concatenate([combined[c]["foods"] for c in plan.groups]),
        "probability_mean_tta": np.concatenate([combined[c]["mean"] for c in plan.groups]),
        "probability_no_tta": np.concatenate([combined[c]["none"] for c in plan.groups]),
    }
    for t, v in enumerate(plan.transforms):
        for name, k in (("prob", 0), ("distance", 1), ("weight", 2)):
            columns[f"{name}_{v}"] = np.concatenate([parts[c][k][:, t] for c in plan.groups])
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
        "in_sample": in_sample,
        "rows": int(n),
        "labelled_rows": int((labels >= 0).sum()),
        "variants": plan.transforms,
        "challenges": list(plan.groups) if plan.challenges else None,
        "setting": plan.selection.to_dict(),
        "settings": asdict(settings),
        "kept_per_image": n_kept(T, settings.keep),
        "fit": {
            "rows": int(len(ref)),
            "source": ref_source,
            "rendered": list(plan.groups),
            "shrinkage": stats.shrinkage,
            "embedding_dim": int(stats.mean.shape[0]),
        },
        "random_init_backbone": random_init,
        "metrics": metrics,
        "expected_reward": rewards,
        "by_variant": by_variant,
        "predictions": str(opts.out),
        "stats": str(stats_path) if stats_path else None,
    }
    metrics_path = opts.out.with_suffix(".metrics.json")
    write_json(metrics_path, report)
    table = None
    if metrics:
        table = tta_table(metrics, rewards, opts.split, random_init, in_sample, plan.challenges)
    return {
        "metrics": report,
        "out": opts.out,
        "metrics_path": metrics_path,
        "stats_path": stats_path,
        "table": table,
        "variant_table": variant_table(by_variant),
    }

"""`roadwork train-head`: train the stage-two head from the cache alone, honestly evaluated.

Read top to bottom: load the cache's ok rows, audit the metadata for label leakage and drop
leaky fields, split train / validation by video, weight the sampler toward the target GPS
distribution, train, then score the head and a logistic-regression baseline on validation
and test, on clean and validator-like (`natix-*`) variants, with and without metadata, at
0.5 and at the validation-tuned threshold. Everything lands in the run folder. When the
cache has roadwork masks the head also learns them (auxiliary losses), and
`--compare-mask-loss` trains it a second time without them, reported side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from roadwork_cache.heads import HeadConfig, RoadworkHead
from roadwork_cache.heads.forward import head_outputs
from roadwork_cache.inference.head_folder import HeadRecord
from roadwork_cache.inference.run_folder import CURVE_FILE, prob_column, write_run
from roadwork_cache.reports.figures import save_curve
from roadwork_cache.reports.tables import NO_MASK_MODEL, mask_loss_table, train_head_table
from roadwork_cache.runtime.devices import resolve_device
from roadwork_cache.runtime.progress import console, progress_bar
from roadwork_cache.training.baselines import fit_baseline
from roadwork_cache.training.dataset import (
    CacheData,
    labelled_rows,
    load_cache_data,
    metadata_batch,
    random_backbone,
)
from roadwork_cache.training.loop import EpochLog, Trainer, TrainResult
from roadwork_cache.training.metrics import best_threshold, binary_metrics
from roadwork_cache.training.prepare import (
    TrainHeadOptions,
    audit_leakage,
    describe_masks,
    evaluation_variants,
    head_config,
    sampling_weights,
    train_variants,
)
from roadwork_cache.training.splits import grouped_split


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
    return rows, tuned["head"], probs


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

    audits, leaky = audit_leakage(data, train_idx, opts)
    config = head_config(data, opts, leaky)
    weights, gps_info = sampling_weights(data, train_idx, test_idx, opts)

    opts.out.mkdir(parents=True, exist_ok=True)
    meta = metadata_batch(config, data)
    mask_info = describe_masks(data, opts, variants)
    model, result = fit_head(
        config,
        opts,
        data,
        variants,
        meta,
        device,
        (train_idx, val_idx, weights),
        "train-head",
        masks=mask_info["used"],
    )
    baseline = fit_baseline(data, train_idx, opts.train.seed)
    sets = {"val": val_idx, "test": test_idx}
    rows, threshold, probs = evaluate(model, data, meta, device, sets, baseline)
    mask_table = None
    if opts.compare_mask_loss:
        # The same head, seed and data without the mask losses: the comparison row pair.
        plain_config = HeadConfig.from_dict({**config.to_dict(), "mask_grid": 0})
        plain, plain_result = fit_head(
            plain_config,
            opts,
            data,
            variants,
            meta,
            device,
            (train_idx, val_idx, weights),
            "without masks",
            masks=False,
        )
        plain_rows, _, plain_probs = evaluate(plain, data, meta, device, sets, baseline)
        rows += [{**r, "model": NO_MASK_MODEL} for r in plain_rows if r["model"] == "head"]
        probs.update(
            {(NO_MASK_MODEL, v, m): p for (n, v, m), p in plain_probs.items() if n == "head"}
        )
        mask_info["without_masks"] = {
            "best_epoch": plain_result.best_epoch,
            "best_val_mcc": plain_result.best_val_mcc,
        }
        mask_table = mask_loss_table(rows, random_init)
    table = train_head_table([r for r in rows if r["model"] != NO_MASK_MODEL], random_init)

    # ---- the run folder ---------------------------------------------------------------------
    record = HeadRecord(
        kind="train-head",
        head=config.to_dict(),
        backbone=data.meta.backbone,
        views=data.meta.views,
        cache=str(Path(opts.cache).resolve()),
        cache_fingerprint=data.fingerprint(),
        threshold=threshold,  # folded into predict's output so that 0.5 is the cut
        variants=variants,
        leaky_fields=leaky,
        allow_leaky_metadata=opts.allow_leaky,
        gps=gps_info,
        train=opts.train.to_dict(),
    )
    metrics = {
        "best_epoch": result.best_epoch,
        "best_val_mcc": result.best_val_mcc,
        "threshold": threshold,
        "random_init_backbone": random_init,
        "rows": rows,
        "history": [h.__dict__ for h in result.history],
        "masks": mask_info,
    }
    set_of = np.full(len(data), "train", dtype=object)
    set_of[val_idx], set_of[test_idx] = "val", "test"
    set_of[data.labels < 0] = "unlabelled"
    columns = {
        "id": data.ids,
        "set": set_of.tolist(),
        "label": [None if v < 0 else int(v) for v in data.labels],
        **{prob_column(*key): value for key, value in probs.items()},
    }
    write_run(opts.out, model, record, metrics, [a.to_dict() for a in audits], columns)
    save_curve(result.history, opts.out / CURVE_FILE)
    return {"table": table, "mask_table": mask_table, "metrics": metrics, "out": opts.out}


def fit_head(
    config: HeadConfig,
    opts: TrainHeadOptions,
    data: CacheData,
    variants: list[str],
    meta,
    device: torch.device,
    split: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    label: str,
    masks: bool,
) -> tuple[RoadworkHead, TrainResult]:
    """A head trained on `variants` (with the mask losses when `masks`), from the run's
    seed, so two heads differ only in what they were asked."""
    train_idx, val_idx, weights = split
    torch.manual_seed(opts.train.seed)
    model = RoadworkHead(config)
    with_masks = masks and bool(data.masks)
    trainer = Trainer(
        model,
        opts.train,
        [data.features[v] for v in variants],
        data.labels,
        meta,
        device,
        eval_features=data.features["clean"],
        masks=[data.masks.get(v) for v in variants] if with_masks else None,
        mask_present=data.mask_present if with_masks else None,
    )
    with progress_bar(disable=not opts.progress) as bar:
        task = bar.add_task(label, total=opts.train.epochs, rate="")

        def on_epoch(log: EpochLog) -> None:
            bar.update(task, advance=1, rate=f"loss {log.loss:.3f} val MCC {log.val_mcc:+.3f}")

        result = trainer.fit(train_idx, val_idx, weights, on_epoch)
    console.print(
        f"{label}: best epoch {result.best_epoch} (val MCC {result.best_val_mcc:+.3f}, "
        f"no metadata){'; stopped early' if result.stopped_early else ''}"
    )
    return model, result


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

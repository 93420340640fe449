"""`roadwork train-head`: train the stage-two head from the cache alone, judged as deployed.

Read top to bottom: load the cache's ok rows, audit the metadata for label leakage and drop
leaky fields, split train / validation by video, weight the sampler toward the target GPS
distribution, and train, early-stopping in the selection setting (natix challenges, no
metadata, labels 50/50). Tune the threshold in that setting and fold it in, write the run
folder, then score the SAVED run through its own bundle beside two linear probes (the global
view, and all 12 views concatenated), on validation and test, clean and natix, with and
without metadata, and simulate the validator's expected reward. One headline leads; the
full table goes to metrics.json and the report. When the cache has roadwork masks the head
also learns them (auxiliary losses), and `--compare-mask-loss` trains it a second time
without them, scored the same way and reported side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadwork_cache.heads import HeadConfig, MetadataBatch, RoadworkHead
from roadwork_cache.heads.combine import fold_threshold
from roadwork_cache.heads.forward import head_outputs
from roadwork_cache.inference.bundles import load_bundle
from roadwork_cache.inference.head_folder import HeadRecord, seen_record, write_head
from roadwork_cache.inference.run_folder import (
    CURVE_FILE,
    claim_run_folder,
    prob_column,
    start_run_folder,
    write_run,
)
from roadwork_cache.reports.figures import save_curve
from roadwork_cache.reports.tables import NO_MASK_MODEL, mask_loss_table, train_head_table
from roadwork_cache.runtime.devices import resolve_device
from roadwork_cache.runtime.progress import console, progress_bar
from roadwork_cache.store.cache import Cache
from roadwork_cache.training.baselines import PROBES, fit_probe
from roadwork_cache.training.dataset import (
    CacheData,
    labelled_rows,
    load_cache_data,
    metadata_batch,
    random_backbone,
)
from roadwork_cache.training.evaluation import ScoredModel, evaluate, headline
from roadwork_cache.training.loop import EpochLog, Trainer, TrainResult
from roadwork_cache.training.prepare import (
    TrainHeadOptions,
    audit_leakage,
    describe_masks,
    head_config,
    sampling_weights,
    selection_for,
    train_variants,
)
from roadwork_cache.training.sampler import share_within
from roadwork_cache.training.selection import Selection, SelectionData
from roadwork_cache.training.splits import choose_split


def probe_models(data, train_idx, val_idx, selection, seed: int) -> list[ScoredModel]:
    """The linear probes, fitted on the clean training rows, their threshold tuned in the
    selection setting on the validation rows (as the head's is) and folded in."""
    models = []
    for name, views in PROBES.items():
        probe = fit_probe(data.features["clean"][train_idx], data.labels[train_idx], views, seed)

        def raw(features, meta, probe=probe):
            return head_outputs(probe, features, None, torch.device("cpu"))[0]

        t = selection.threshold(
            data.labels[val_idx], [raw(data.features[v][val_idx], None) for v in selection.variants]
        )
        models.append(
            ScoredModel(
                name,
                raw,
                lambda f, m, raw=raw, t=t: fold_threshold(raw(f, m), t),
                t,
                metadata=False,
            )
        )
    return models


def run_train_head(opts: TrainHeadOptions) -> dict[str, Any]:
    claim_run_folder(opts.out, opts.overwrite)  # before any work: never lose an earlier run
    device = resolve_device(opts.device)
    torch.manual_seed(opts.train.seed)

    available = Cache.open(opts.cache).variants()
    variants = train_variants(available, opts.variants)
    if "clean" not in variants:
        variants = ["clean", *variants]
    # natix-* are always loaded: whatever the head trains on, it is judged on the challenges.
    data = load_cache_data(
        opts.cache, sorted({*variants, *(v for v in available if v.startswith("natix-"))})
    )
    random_init = random_backbone(data)

    pool, test_idx = labelled_rows(data)
    split = data.split_names()
    chosen = choose_split(
        data.labels[pool], data.groups()[pool], opts.val_fraction, opts.train.seed, split[pool]
    )
    train_idx, val_idx = pool[chosen.train], pool[chosen.val]
    console.print(
        f"rows: {len(train_idx)} train, {len(val_idx)} validation (grouped by video"
        + (f"; {chosen.note}" if chosen.note else "")
        + f"), {len(test_idx)} test; variants for training: {', '.join(variants)}"
    )
    if other := data.other_splits():
        console.print(
            "rows of other split names train too: "
            + ", ".join(f"{name} ({n})" for name, n in other.items())
        )

    selection = selection_for(data)
    audits, leaky = audit_leakage(data, train_idx, opts)
    config = head_config(data, opts, leaky)
    weights, gps_info = sampling_weights(data, train_idx, test_idx, opts)

    start_run_folder(opts.out)
    meta = metadata_batch(config, data)
    mask_info = describe_masks(data, opts, variants)
    split = (train_idx, val_idx, weights)
    model, result, drawn = fit_head(
        config,
        opts,
        data,
        variants,
        meta,
        device,
        split,
        selection,
        "train-head",
        masks=mask_info["used"],
    )
    if gps_info.get("enabled"):  # what the sampler drew, not just what its weights promise
        lat, lon = data.gps()
        gps_info["share_within_100km_drawn"] = share_within(
            lat[drawn], lon[drawn], np.asarray(gps_info["centres"]), 100.0
        )
    # The cut tuned in the selection setting, folded into everything the run deploys.
    threshold = selection.threshold(
        data.labels[val_idx],
        [
            head_outputs(model, data.features[v][val_idx], None, device)[0]
            for v in selection.variants
        ],
    )

    # ---- the run folder, then every score through the saved bundle --------------------------
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
        selection=selection.to_dict(),
        seen=seen_record(
            str(Path(opts.cache).resolve()), [str(n) for n in set(data.split_names()[pool])]
        ),
        gps=gps_info,
        train=opts.train.to_dict(),
    )
    write_head(opts.out, model, record)
    bundle = load_bundle(opts.out, device)
    head = ScoredModel("head", bundle.raw_predict, bundle.predict, bundle.threshold)
    models = [head, *probe_models(data, train_idx, val_idx, selection, opts.train.seed)]
    sets = {"val": val_idx, "test": test_idx}
    evaluation = evaluate(models, data, meta, sets)
    lead = {m.name: headline(evaluation, m.name, ["test", "val"]) for m in models}
    mask_table = None
    if opts.compare_mask_loss:
        # The same head, seed and data without the mask losses: the comparison row pair,
        # its cut tuned in the selection setting and folded in, as the head's is.
        plain_config = HeadConfig.from_dict({**config.to_dict(), "mask_grid": 0})
        plain, plain_result, _ = fit_head(
            plain_config,
            opts,
            data,
            variants,
            meta,
            device,
            split,
            selection,
            "without masks",
            masks=False,
        )
        plain_model = scored_head(NO_MASK_MODEL, plain, data, val_idx, selection, device)
        extra = evaluate([plain_model], data, meta, sets)
        evaluation.rows += extra.rows
        evaluation.raw.update(extra.raw)
        mask_info["without_masks"] = {
            "best_epoch": plain_result.best_epoch,
            "best_val_mcc": plain_result.best_val_mcc,
        }
        mask_table = mask_loss_table(evaluation.rows, random_init)
    metrics = {
        "best_epoch": result.best_epoch,
        "best_val_mcc": result.best_val_mcc,
        "threshold": threshold,
        "selection": {**selection.to_dict(), "fallback_warning": selection.fallback},
        "headline": lead,
        "expected_reward": (lead["head"] or {}).get("expected_reward"),
        "expected_rewards": evaluation.rewards,
        "random_init_backbone": random_init,
        "masks": mask_info,
        "rows": evaluation.rows,
        "history": [h.__dict__ for h in result.history],
    }
    set_of = np.full(len(data), "train", dtype=object)
    set_of[val_idx], set_of[test_idx] = "val", "test"
    set_of[data.labels < 0] = "unlabelled"
    columns = {
        "id": data.ids,
        "set": set_of.tolist(),
        "label": [None if v < 0 else int(v) for v in data.labels],
        **{prob_column(*key): value for key, value in evaluation.raw.items()},
    }
    write_run(opts.out, None, record, metrics, [a.to_dict() for a in audits], columns)
    save_curve(result.history, result.best_epoch, opts.out / CURVE_FILE)
    table = train_head_table(evaluation.rows, lead, random_init)
    return {"table": table, "mask_table": mask_table, "metrics": metrics, "out": opts.out}


def fit_head(
    config: HeadConfig,
    opts: TrainHeadOptions,
    data: CacheData,
    variants: list[str],
    meta: MetadataBatch,
    device: torch.device,
    split: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    selection: Selection,
    label: str,
    masks: bool,
) -> tuple[RoadworkHead, TrainResult, np.ndarray]:
    """A head trained on `variants` (with the mask losses when `masks`), from the run's seed,
    early-stopping in the selection setting: two heads differ only in what they were asked.
    Also returns every row the sampler drew."""
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
        selection=SelectionData.of(selection, data.features),
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
        f"{selection.name}, no metadata, 50/50){'; stopped early' if result.stopped_early else ''}"
    )
    return model, result, np.concatenate(trainer.drawn)


def scored_head(
    name: str,
    model: RoadworkHead,
    data: CacheData,
    val_idx: np.ndarray,
    selection: Selection,
    device: torch.device,
) -> ScoredModel:
    """An in-memory head as the tables score it: its cut tuned in the selection setting on the
    validation rows and folded in, as a saved run's bundle does."""

    def raw(features, meta):
        return head_outputs(model, features, meta, device)[0]

    t = selection.threshold(
        data.labels[val_idx], [raw(data.features[v][val_idx], None) for v in selection.variants]
    )
    return ScoredModel(name, raw, lambda f, m: fold_threshold(raw(f, m), t), t)

"""Stage two's ensemble commands: `ensemble` (members, folds, stacking, DoRA) and `tta`
(FOODS over cached test-time variants)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from roadwork_cache.cli.app import (
    AllowLeaky,
    BatchSize,
    CacheFolder,
    ConfigFile,
    Device,
    GpsBeyond,
    GpsBrackets,
    LeakBound,
    Overwrite,
    Patience,
    Progress,
    TrainVariants,
    above,
    at_least,
    check_flags,
    gps_and_leakage,
    layered,
    read_config_file,
)


def ensemble(
    ctx: typer.Context,
    cache: CacheFolder,
    out: Annotated[
        Path,
        typer.Option(
            help="Ensemble folder (members, manifest, metrics); "
            "finished members of an earlier run are reused."
        ),
    ],
    members: Annotated[
        str,
        typer.Option(
            help="'default' (baseline, no-pruning, deep, wide, heads16, gps-strong) or a YAML / "
            "JSON file: a list of {name, seed, head, train, gps_strength, variants}."
        ),
    ] = "default",
    folds: Annotated[
        int,
        typer.Option(
            help="Grouped folds: each member trains once per fold for out-of-fold logits."
        ),
    ] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the folds (members have their own).")] = 42,
    dora_folds: Annotated[int, typer.Option(help="DoRA folds of the target set (0: no DoRA).")] = 0,
    dora_member: Annotated[
        str | None,
        typer.Option(help="Member to adapt with DoRA (default: the best out-of-fold MCC)."),
    ] = None,
    dora_lr: Annotated[float, typer.Option(help="DoRA learning rate.")] = 1e-4,
    dora_rank: Annotated[int, typer.Option(help="DoRA rank.")] = 8,
    dora_epochs: Annotated[int, typer.Option(help="DoRA epochs per fold (early stopping).")] = 20,
    target: Annotated[
        str | None,
        typer.Option(
            help="Target set: 'test' (this cache's test split), another labelled cache (DoRA "
            "folds and GPS weighting) or a CSV of lat,lon (GPS weighting only). Without it GPS "
            "weighting steers toward the test split; --dora-folds needs it named."
        ),
    ] = None,
    combine: Annotated[
        str, typer.Option(help="auto (best cross-fitted OOF MCC), mean, weighted or stacked.")
    ] = "auto",
    distill: Annotated[
        bool,
        typer.Option(
            "--distill", help="Also train one student head on the ensemble's soft labels."
        ),
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            help="Worker processes for the member folds, each loading the cache itself (on a "
            "GPU they share it; small heads leave it idle between kernels)."
        ),
    ] = 1,
    batch_folds: Annotated[
        bool,
        typer.Option(
            "--batch-folds/--no-batch-folds",
            help="Train a member's folds (and members of the same settings) as one batched "
            "computation (vmap). Same rows and batches per fold; off by default until it is "
            "measured faster on a GPU (on a 2-core CPU it is not).",
        ),
    ] = False,
    epochs: Annotated[int, typer.Option(help="Maximum epochs per member fold.")] = 30,
    batch_size: BatchSize = 128,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of the members.")] = 3e-4,
    patience: Patience = 8,
    variants: TrainVariants = None,
    config: ConfigFile = None,
    gps_brackets: GpsBrackets = "50:5,200:2.5,500:1",
    gps_beyond: GpsBeyond = 0.3,
    leak_bound: LeakBound = 0.3,
    allow_leaky_metadata: AllowLeaky = False,
    overwrite: Overwrite = False,
    device: Device = "auto",
    progress: Progress = True,
) -> None:
    """Train an ensemble of diverse heads, stack them, optionally adapt one with DoRA.

    Members train on the same grouped folds; their out-of-fold logits feed a stacking
    meta-learner compared with mean and MCC-weighted averaging. DoRA folds adapt a member to
    a target set; --distill trains one student. One table compares every member and
    combination, with and without metadata, clean and natix."""

    from roadwork_cache.runtime.progress import results
    from roadwork_cache.stages.ensemble import BundleMismatch, run_ensemble
    from roadwork_cache.training.dora import DoraSettings
    from roadwork_cache.training.loop import TrainConfig
    from roadwork_cache.training.plan import EnsembleOptions

    check_flags(
        at_least("--folds", folds, 2),
        at_least("--jobs", jobs, 1),
        at_least("--dora-folds", dora_folds, 0),
        ("--dora-folds", dora_folds, lambda v: v != 1, "be 0 (no DoRA) or at least 2"),
        above("--dora-lr", dora_lr, 0),
        at_least("--dora-rank", dora_rank, 1),
        at_least("--dora-epochs", dora_epochs, 1),
        at_least("--epochs", epochs, 1),
        at_least("--batch-size", batch_size, 1),
        above("--lr", lr, 0),
        at_least("--patience", patience, 0),
    )
    sampling = gps_and_leakage(gps_brackets, gps_beyond, leak_bound, allow_leaky_metadata)
    file_cfg = read_config_file(config) if config else {}
    train_values = layered(
        ctx,
        dict(file_cfg.get("train") or {}),
        {
            "epochs": ("epochs", epochs),
            "batch_size": ("batch_size", batch_size),
            "lr": ("lr", lr),
            "patience": ("patience", patience),
        },
    )
    opts = EnsembleOptions(
        cache=cache,
        out=out,
        members=members,
        folds=folds,
        seed=seed,
        head=dict(file_cfg.get("head") or {}),
        train=TrainConfig.from_dict(train_values),
        variants=[v.strip() for v in variants.split(",")] if variants else None,
        target=target,
        dora_folds=dora_folds,
        dora_member=dora_member,
        dora=DoraSettings(rank=dora_rank, alpha=2.0 * dora_rank, lr=dora_lr, epochs=dora_epochs),
        combine=combine,
        distill=distill,
        jobs=jobs,
        batch_folds=batch_folds,
        **sampling,
        device=device,
        progress=progress,
        overwrite=overwrite,
    )
    try:
        result = run_ensemble(opts)
    except BundleMismatch as exc:  # everything is written: show it, then say what is wrong
        results.print(exc.result["table"])
        raise
    results.print(result["table"])
    results.print(
        f"ensemble folder: {result['out']} (manifest.json, members/, "
        "meta_learner.json, metrics.json, predictions.parquet, table.txt)"
    )


def tta(
    cache: Annotated[Path, typer.Option(help="Cache folder with clean and tta-K variants.")],
    model: Annotated[
        Path,
        typer.Option(
            help="A `train-head` run folder or an `ensemble` folder trained on that cache."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Predictions parquet to write; the metrics JSON goes beside it (.metrics.json)."
        ),
    ],
    split: Annotated[str, typer.Option(help="Split of the cache to score, or 'all'.")] = "test",
    variants: Annotated[
        str | None,
        typer.Option(
            help="Candidate variants, e.g. 'clean,tta:8' (default: clean and every cached tta-K)."
        ),
    ] = None,
    keep: Annotated[
        float,
        typer.Option(
            help="Fraction of each image's candidates FOODS keeps, closest first (at least one)."
        ),
    ] = 0.8,
    distance: Annotated[
        str,
        typer.Option(
            help="Distance to the training embeddings: mahalanobis (Ledoit-Wolf shrunk "
            "covariance) or euclidean."
        ),
    ] = "mahalanobis",
    temperature: Annotated[
        float,
        typer.Option(help="Weights are softmax(-distance / temperature); 1 is the definition."),
    ] = 1.0,
    save_stats: Annotated[
        bool,
        typer.Option(
            help="Write foods.safetensors into the model folder, so `roadwork predict --tta` "
            "weighs its variants the same way."
        ),
    ] = True,
    device: Device = "auto",
    progress: Progress = True,
) -> None:
    """FOODS test-time augmentation from cached TTA variants, beside mean-TTA and no TTA.

    Each candidate variant of an image is weighted by softmax(-d) of the Mahalanobis distance
    d of its head embedding to the training rows' embeddings, after keeping the closest 80 %;
    the image's probability is the weighted mean. Prints one table (MCC, accuracy, reward,
    AUC, metadata-free) when the split has labels.
    """
    from roadwork_cache.inference.foods import FoodsSettings
    from roadwork_cache.runtime.progress import console, results
    from roadwork_cache.stages.tta import TtaOptions, run_tta
    from roadwork_cache.views.variants import parse_variants

    opts = TtaOptions(
        cache=cache,
        model=model,
        out=out,
        split=split,
        variants=parse_variants(variants) if variants else None,
        settings=FoodsSettings(keep=keep, distance=distance, temperature=temperature),
        save_stats=save_stats,
        device=device,
        progress=progress,
    )
    result = run_tta(opts)
    if result["table"] is not None:
        results.print(result["table"])
    else:
        console.print(f"split {split} has no labels: predictions only, no metrics")
    results.print(result["variant_table"])
    results.print(
        f"predictions: {result['out']}; metrics: {result['metrics_path']}"
        + (f"; FOODS statistics: {result['stats_path']}" if result["stats_path"] else "")
    )

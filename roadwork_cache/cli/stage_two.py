"""Stage two's single-head commands: `train-head` and its `report`."""

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
    between,
    check_flags,
    gps_and_leakage,
    layered,
    read_config_file,
)


def train_head(
    ctx: typer.Context,
    cache: CacheFolder,
    out: Annotated[Path, typer.Option(help="Run folder for config, weights, metrics.")],
    epochs: Annotated[
        int, typer.Option(help="Maximum epochs (early stopping may end sooner).")
    ] = 30,
    seed: Annotated[
        int, typer.Option(help="Seed of init, split, sampler; same seed, same run.")
    ] = 42,
    layers: Annotated[int | None, typer.Option(help="Gated-attention blocks (default 4).")] = None,
    dim: Annotated[int | None, typer.Option(help="Head width (default 512).")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads (default 8).")] = None,
    keep: Annotated[
        int | None, typer.Option(help="Views kept by token pruning (default 8).")
    ] = None,
    no_pruning: Annotated[bool, typer.Option("--no-pruning", help="Keep all 12 views.")] = False,
    meta_fields: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated metadata fields the head reads, of gps, weather, daytime, scene "
            "and text; '' for none. Default: gps,weather,daytime,scene (text is left out: scene "
            "descriptions are set only on roadwork rows, so they leak the label)."
        ),
    ] = None,
    field_dropout: Annotated[
        float | None,
        typer.Option(help="Probability of hiding each metadata field per row in training."),
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout in the head.")] = None,
    batch_size: BatchSize = 128,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-4,
    accum_steps: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    patience: Patience = 8,
    w_consistency: Annotated[
        float, typer.Option(help="Weight of the multi-view consistency loss.")
    ] = 0.1,
    w_weather: Annotated[float, typer.Option(help="Weight of the auxiliary weather loss.")] = 0.1,
    w_mask: Annotated[
        float,
        typer.Option(
            help="Weight of the auxiliary mask loss (each view's roadwork coverage grid), "
            "used when the cache has masks; 0 turns it off."
        ),
    ] = 0.2,
    mask_pruning: Annotated[
        float,
        typer.Option(help="Weight of the masks' supervision of the pruning scorer (0: off)."),
    ] = 0.0,
    compare_mask_loss: Annotated[
        bool,
        typer.Option(
            "--compare-mask-loss",
            help="Also train the head without the mask losses and report both MCCs.",
        ),
    ] = False,
    variants: TrainVariants = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="GPS target for weighted sampling: a cache folder or a CSV with lat,lon "
            "(default: the cache's test split)."
        ),
    ] = None,
    gps_brackets: GpsBrackets = "50:5,200:2.5,500:1",
    gps_beyond: GpsBeyond = 0.3,
    leak_bound: LeakBound = 0.3,
    allow_leaky_metadata: AllowLeaky = False,
    config: ConfigFile = None,
    overwrite: Overwrite = False,
    device: Device = "auto",
    progress: Progress = True,
) -> None:
    """Train the pruning / gated-attention / GAFM / metadata head from cached features.

    Prints a leakage audit, then a metrics table on validation and test, on clean and
    validator-like variants, with and without metadata, at 0.5 and at the tuned threshold,
    beside a logistic-regression baseline on the global view.
    """

    from roadwork_cache.runtime.progress import results
    from roadwork_cache.stages.train_head import run_train_head
    from roadwork_cache.training.loop import TrainConfig
    from roadwork_cache.training.prepare import TrainHeadOptions

    check_flags(
        at_least("--epochs", epochs, 1),
        at_least("--batch-size", batch_size, 1),
        above("--lr", lr, 0),
        at_least("--accum-steps", accum_steps, 1),
        at_least("--patience", patience, 0),
        at_least("--layers", layers, 1),
        at_least("--dim", dim, 1),
        at_least("--heads", heads, 1),
        between("--keep", keep, 1, 12),
        between("--dropout", dropout, 0, 1, high_open=True),
        between("--field-dropout", field_dropout, 0, 1),
        at_least("--w-consistency", w_consistency, 0),
        at_least("--w-weather", w_weather, 0),
        at_least("--w-mask", w_mask, 0),
        at_least("--mask-pruning", mask_pruning, 0),
    )
    sampling = gps_and_leakage(gps_brackets, gps_beyond, leak_bound, allow_leaky_metadata)
    file_cfg = read_config_file(config) if config else {}
    head: dict = dict(file_cfg.get("head") or {})
    for key, value in {
        "layers": layers,
        "dim": dim,
        "heads": heads,
        "keep": keep,
        "field_dropout": field_dropout,
        "dropout": dropout,
    }.items():
        if value is not None:
            head[key] = value
    if no_pruning:
        head["keep"] = None
    if meta_fields is not None:
        head["meta_fields"] = [f.strip() for f in meta_fields.split(",") if f.strip()]
    file_train = dict(file_cfg.get("train") or {})
    train_values = layered(
        ctx,
        file_train,
        {
            "epochs": ("epochs", epochs),
            "seed": ("seed", seed),
            "batch_size": ("batch_size", batch_size),
            "lr": ("lr", lr),
            "accum_steps": ("accum_steps", accum_steps),
            "patience": ("patience", patience),
        },
    )
    loss_values = layered(
        ctx,
        dict(file_train.get("loss") or {}),
        {
            "consistency": ("w_consistency", w_consistency),
            "weather": ("w_weather", w_weather),
            "mask": ("w_mask", w_mask),
            "mask_pruning": ("mask_pruning", mask_pruning),
        },
    )
    train_cfg = TrainConfig.from_dict({**train_values, "loss": loss_values})
    opts = TrainHeadOptions(
        cache=cache,
        out=out,
        head=head,
        train=train_cfg,
        variants=[v.strip() for v in variants.split(",")] if variants else None,
        target=target,
        **sampling,
        device=device,
        progress=progress,
        overwrite=overwrite,
        compare_mask_loss=compare_mask_loss,
    )
    result = run_train_head(opts)
    results.print(result["table"])
    if result.get("mask_table") is not None:
        results.print(result["mask_table"])
    results.print(
        f"run folder: {result['out']} (config.json, model.safetensors, metrics.json,"
        " predictions.parquet, curve.png)"
    )


def report(
    run: Annotated[Path, typer.Argument(help="Run folder made by `roadwork train-head`.")],
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write (default RUN/report.html).")
    ] = None,
    set_name: Annotated[
        str | None,
        typer.Option(
            "--set", help="test or val (default: test when it has labelled rows, else val)."
        ),
    ] = None,
) -> None:
    """Write a self-contained HTML page about a train-head run.

    Metrics, confusion matrices, MCC per weather / daytime / scene / city / GPS cluster,
    calibration, learning curves, the hardest errors and the leakage audit."""
    from roadwork_cache.runtime.progress import results
    from roadwork_cache.stages.report import write_report

    path = write_report(run, out, set_name)
    results.print(f"report written to {path}")

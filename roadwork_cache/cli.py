"""The `roadwork` command line: thin, it parses flags and calls a stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from roadwork_cache.runtime.errors import UserError

app = typer.Typer(
    help="Roadwork / no-roadwork classification on a frozen DINOv3 backbone, as a two-stage "
    "feature cache: `extract` runs the backbone once and stores per-view features; the heads "
    "then train from the cache alone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # paragraphs reflow instead of keeping source line breaks
)
cache_app = typer.Typer(help="Inspect a feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

# Options that several commands share, declared once.
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]
GpsBrackets = Annotated[
    str, typer.Option(help="km:weight brackets of distance to the nearest target centre.")
]
GpsBeyond = Annotated[float, typer.Option(help="Weight beyond the last bracket.")]
LeakBound = Annotated[
    float, typer.Option(help="A metadata field whose |MCC| with the label exceeds this is leaky.")
]
AllowLeaky = Annotated[
    bool,
    typer.Option("--allow-leaky-metadata", help="Keep leaky fields (scores will be inflated)."),
]


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the parquet shards into.")],
    rows: Annotated[int, typer.Option(help="Number of images (rows) to generate.")] = 400,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 0,
    shard_rows: Annotated[int, typer.Option(help="Rows per parquet shard.")] = 256,
    test_fraction: Annotated[
        float, typer.Option(help="Share of rows (whole videos) in the test split.")
    ] = 0.25,
) -> None:
    """Write a synthetic dataset in the exact NATIX parquet format (demo and test data).

    Road scenes are drawn procedurally: roadwork rows have cones, barriers, drums and signs
    (many small and far away), negatives have none; frames come in videos; GPS, tags and
    scene descriptions follow the real data's columns and NULL patterns.
    """
    from roadwork_cache.runtime.progress import console, progress_bar
    from roadwork_cache.synth.dataset import write_synthetic

    with progress_bar() as bar:
        task = bar.add_task("synth", total=rows, rate="")
        paths = write_synthetic(
            out,
            rows,
            seed,
            shard_rows=shard_rows,
            test_fraction=test_fraction,
            progress=lambda n: bar.update(task, advance=n),
        )
    console.print(f"wrote {rows} rows in {len(paths)} shard(s) to {out}")


@app.command()
def extract(
    source: Annotated[
        str,
        typer.Argument(
            help="NATIX parquet shards (a glob such as 'data/*.parquet', a folder or a file), or "
            "an image folder with manifest.csv / manifest.jsonl."
        ),
    ],
    cache: Annotated[Path, typer.Option(help="Cache folder to create or resume.")] = Path(
        "cache/default"
    ),
    backbone: Annotated[
        str,
        typer.Option(
            help="Preset: vith16plus, vitl16, vitb16, vits16, or tiny (random weights, for "
            "tests and the demo)."
        ),
    ] = "tiny",
    weights: Annotated[
        str | None,
        typer.Option(
            help="Local weights: a transformers DINOv3 folder or a timm / Meta .pth / "
            ".safetensors file. Nothing is downloaded."
        ),
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option(
            help="Manifest (.csv / .jsonl with filename, label, ...) for an image folder."
        ),
    ] = None,
    view_size: Annotated[
        int | None,
        typer.Option(
            help="Side of each square view in pixels (multiple of 16; default 512, tiny 224)."
        ),
    ] = None,
    pool: Annotated[
        str,
        typer.Option(
            help="'cls' (CLS token after the final norm) or 'cls+mean' (adds the patch mean)."
        ),
    ] = "cls",
    batch_size: Annotated[int, typer.Option(help="Images per forward (x12 views).")] = 8,
    workers: Annotated[
        int | None,
        typer.Option(
            help="DataLoader worker processes for decoding (default: 8 on CUDA, 1 on CPU)."
        ),
    ] = None,
    device: Device = "auto",
    shard_rows: Annotated[
        int, typer.Option(help="Rows per Zarr shard: the unit of writing and of resume.")
    ] = 1024,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows.")] = None,
    splits: Annotated[
        str | None,
        typer.Option(
            help="Only these splits, e.g. 'train' or 'train,test' (from shard names such as "
            "train-00000-of-00010.parquet, or a manifest's 'split' column)."
        ),
    ] = None,
    variants: Annotated[
        str,
        typer.Option(
            help="Variants to store: clean, aug:K (training augmentation), natix:K (the "
            "validator's 224 px challenges, level K % 4), tta:K (deterministic test-time views, "
            "K <= 8). Variants already in the cache are skipped."
        ),
    ] = "clean",
    text: Annotated[
        bool, typer.Option(help="Embed scene_description with the bundled all-MiniLM-L6-v2.")
    ] = True,
    progress: Progress = True,
) -> None:
    """Run the frozen DINOv3 backbone once over the 12 views of every image into a Zarr cache.

    Re-running on an existing cache resumes: shards already written are skipped, and new
    variants are added without recomputing the old ones. Unreadable images become rows with
    status 'error' and the run goes on. Multi-GPU: torchrun --nproc-per-node N -m
    roadwork_cache.cli extract ... (same arguments).
    """
    from roadwork_cache.reports.tables import extract_table
    from roadwork_cache.runtime.progress import console
    from roadwork_cache.stages.extract import ExtractConfig, run_extract
    from roadwork_cache.views.variants import parse_variants

    if batch_size < 1 or shard_rows < 1:
        raise UserError("--batch-size and --shard-rows must be at least 1")
    cfg = ExtractConfig(
        source=source,
        cache=cache,
        backbone=backbone,
        weights=weights,
        manifest=manifest,
        view_size=view_size,
        pool=pool,
        batch_size=batch_size,
        workers=workers,
        device=device,
        shard_rows=shard_rows,
        limit=limit,
        variants=parse_variants(variants),
        text=text,
        splits=[x for x in splits.split(",") if x.strip()] if splits else None,
        progress=progress,
    )
    summary = run_extract(cfg)
    if summary is not None:  # rank 0 (or the only process) reports
        console.print(extract_table(summary))


def _parse_brackets(text: str) -> tuple[tuple[float, float], ...]:
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return tuple((float(km), float(w)) for km, w in pairs)
    except ValueError:
        raise UserError(f"--gps-brackets {text!r} must look like '50:5,200:2.5,500:1'") from None


def _read_config_file(path: Path) -> dict:
    """A JSON or YAML file with optional 'head' and 'train' sections."""
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise UserError(f"config file {path} is not valid JSON/YAML: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"head", "train"}:
        raise UserError(f"config file {path} must hold only 'head' and 'train' sections")
    return data


@app.command("train-head")
def train_head(
    cache: Annotated[Path, typer.Option(help="Cache folder made by `roadwork extract`.")],
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
            help="Comma-separated metadata fields the head reads (gps,weather,daytime,scene,text);"
            " '' for none."
        ),
    ] = None,
    field_dropout: Annotated[
        float | None,
        typer.Option(help="Probability of hiding each metadata field per row in training."),
    ] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout in the head.")] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 128,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-4,
    accum_steps: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    patience: Annotated[
        int, typer.Option(help="Epochs without a better val MCC before stopping.")
    ] = 8,
    w_consistency: Annotated[
        float, typer.Option(help="Weight of the multi-view consistency loss.")
    ] = 0.1,
    w_weather: Annotated[float, typer.Option(help="Weight of the auxiliary weather loss.")] = 0.1,
    variants: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated cached variants drawn per row per epoch (default: clean, "
            "aug-*, natix-*)."
        ),
    ] = None,
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
    config: Annotated[
        Path | None,
        typer.Option(help="JSON or YAML file with 'head' and 'train' sections; flags override it."),
    ] = None,
    device: Device = "auto",
    progress: Progress = True,
) -> None:
    """Train the pruning / gated-attention / GAFM / metadata head from cached features.

    Prints a leakage audit, then a metrics table on validation and test, on clean and
    validator-like variants, with and without metadata, at 0.5 and at the tuned threshold,
    beside a logistic-regression baseline on the global view.
    """

    from roadwork_cache.runtime.progress import console
    from roadwork_cache.stages.train_head import run_train_head
    from roadwork_cache.training.loop import TrainConfig
    from roadwork_cache.training.prepare import TrainHeadOptions

    file_cfg = _read_config_file(config) if config else {}
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
    train_values = dict(file_cfg.get("train") or {})
    if epochs < 1 or batch_size < 1 or accum_steps < 1:
        raise UserError("--epochs, --batch-size and --accum-steps must be at least 1")
    train_values.update(
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        accum_steps=accum_steps,
        patience=patience,
    )
    loss_values = dict(train_values.get("loss") or {})
    loss_values.update(consistency=w_consistency, weather=w_weather)
    train_cfg = TrainConfig.from_dict({**train_values, "loss": loss_values})
    opts = TrainHeadOptions(
        cache=cache,
        out=out,
        head=head,
        train=train_cfg,
        variants=[v.strip() for v in variants.split(",")] if variants else None,
        target=target,
        gps_brackets=_parse_brackets(gps_brackets),
        gps_beyond=gps_beyond,
        leak_bound=leak_bound,
        allow_leaky=allow_leaky_metadata,
        device=device,
        progress=progress,
    )
    result = run_train_head(opts)
    console.print(result["table"])
    console.print(
        f"run folder: {result['out']} (config.json, model.safetensors, metrics.json,"
        " predictions.parquet, curve.png)"
    )


@app.command()
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
    from roadwork_cache.stages.report import write_report

    path = write_report(run, out, set_name)
    typer.echo(f"report written to {path}")


@app.command()
def ensemble(
    cache: Annotated[Path, typer.Option(help="Cache folder made by `roadwork extract`.")],
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
            help="Target set: a labelled cache (DoRA folds and GPS weighting) or a CSV of lat,lon "
            "(GPS weighting only); default: the cache's test split."
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
    epochs: Annotated[int, typer.Option(help="Maximum epochs per member fold.")] = 30,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 128,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of the members.")] = 3e-4,
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs.")] = 8,
    variants: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated cached variants drawn per row per epoch (default: clean, "
            "aug-*, natix-*); a member's own 'variants' wins."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="JSON or YAML file with 'head' and 'train' sections under every member."),
    ] = None,
    gps_brackets: GpsBrackets = "50:5,200:2.5,500:1",
    gps_beyond: GpsBeyond = 0.3,
    leak_bound: LeakBound = 0.3,
    allow_leaky_metadata: AllowLeaky = False,
    device: Device = "auto",
    progress: Progress = True,
) -> None:
    """Train an ensemble of diverse heads, stack them, optionally adapt one with DoRA.

    Members train on the same grouped folds; their out-of-fold logits feed a stacking
    meta-learner compared with mean and MCC-weighted averaging. DoRA folds adapt a member to
    a target set; --distill trains one student. One table compares every member and
    combination, with and without metadata, clean and natix."""

    from roadwork_cache.runtime.progress import console
    from roadwork_cache.stages.ensemble import run_ensemble
    from roadwork_cache.training.dora import DoraSettings
    from roadwork_cache.training.loop import TrainConfig
    from roadwork_cache.training.plan import EnsembleOptions

    file_cfg = _read_config_file(config) if config else {}
    train_values = dict(file_cfg.get("train") or {})
    if min(epochs, batch_size, dora_epochs, dora_rank) < 1:
        raise UserError("--epochs, --batch-size, --dora-epochs and --dora-rank must be at least 1")
    train_values.update(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience)
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
        gps_brackets=_parse_brackets(gps_brackets),
        gps_beyond=gps_beyond,
        leak_bound=leak_bound,
        allow_leaky=allow_leaky_metadata,
        device=device,
        progress=progress,
    )
    result = run_ensemble(opts)
    console.print(result["table"])
    console.print(
        f"ensemble folder: {result['out']} (manifest.json, members/, "
        "meta_learner.json, metrics.json, predictions.parquet, table.txt)"
    )


@app.command()
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
    from roadwork_cache.runtime.progress import console
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
        console.print(result["table"])
    else:
        console.print(f"split {split} has no labels: predictions only, no metrics")
    console.print(result["variant_table"])
    console.print(
        f"predictions: {result['out']}; metrics: {result['metrics_path']}"
        + (f"; FOODS statistics: {result['stats_path']}" if result["stats_path"] else "")
    )


@app.command()
def predict(
    images: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (searched recursively) or quoted globs; JPEG, PNG, WebP."
        ),
    ],
    model: Annotated[Path, typer.Option(help="A `train-head` run folder or an `ensemble` folder.")],
    weights: Annotated[
        str | None,
        typer.Option(
            help="Backbone weights (transformers folder or .pth / .safetensors file); default: the "
            "file the model's cache was made with, if it is on this machine. Not needed for tiny."
        ),
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="Backbone preset (default: the one recorded by the model's cache)."),
    ] = None,
    tta: Annotated[
        bool,
        typer.Option(
            help="On-the-fly TTA: score the clean image and its tta-K variants and combine them by "
            "FOODS when the model folder holds foods.safetensors (from `roadwork tta`), else by "
            "their mean."
        ),
    ] = False,
    tta_variants: Annotated[
        str | None,
        typer.Option(
            help="Variants for --tta, e.g. 'clean,tta:4' (default: those FOODS was fitted on, "
            "else clean,tta:8)."
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Images per forward (x variants x 12 views).")
    ] = 8,
    workers: Annotated[
        int | None,
        typer.Option(
            help="DataLoader worker processes for decoding (default: 8 on CUDA, 1 on CPU)."
        ),
    ] = None,
    device: Device = "auto",
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON array: {path, probability, roadwork, error} per image."
        ),
    ] = False,
    progress: Progress = True,
) -> None:
    """The probability a StreetVision miner would return for each image (0.5 is the cut).

    Runs the whole path: decode, 12 views (and TTA variants), the frozen backbone the model's
    cache was made with (any other is refused), the head or ensemble, the folded threshold.
    An unreadable image gets an error line and the others still get answers; the exit
    status is then 1.
    """
    from roadwork_cache.reports.tables import answers_table
    from roadwork_cache.runtime.progress import console
    from roadwork_cache.stages.predict import PredictOptions, run_predict
    from roadwork_cache.views.variants import parse_variants

    opts = PredictOptions(
        inputs=images,
        model=model,
        weights=weights,
        backbone=backbone,
        tta=tta,
        tta_variants=parse_variants(tta_variants) if tta_variants else None,
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=progress and not json_out,
    )
    answers, predictor = run_predict(opts)
    for note in predictor.notes:
        console.print(f"note: {note}")
    if json_out:
        typer.echo(json.dumps([a.to_dict() for a in answers], indent=1))
    else:
        from rich.console import Console

        Console().print(answers_table(answers, predictor))
    failed = sum(a.error is not None for a in answers)
    if failed:
        console.print(f"{failed} of {len(answers)} image(s) could not be read")
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Folder for everything the demo writes.")] = Path(
        "demo-out"
    ),
    rows: Annotated[int, typer.Option(help="Synthetic images.")] = 240,
    view_size: Annotated[int, typer.Option(help="View size (multiple of 16).")] = 64,
    variants: Annotated[
        str, typer.Option(help="Variants to extract.")
    ] = "clean,aug:2,natix:2,tta:4",
    epochs: Annotated[int, typer.Option(help="Epochs of each head.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the data and the heads.")] = 0,
    text: Annotated[bool, typer.Option(help="Embed scene descriptions (bundled MiniLM).")] = True,
) -> None:
    """The whole chain on synthetic data, on a CPU, in minutes.

    synth -> extract (tiny backbone) -> train-head -> ensemble -> tta -> predict -> report.

    The tiny backbone has random weights: the scores demonstrate the machinery, not quality.
    """
    from roadwork_cache.stages.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            out=out,
            rows=rows,
            view_size=view_size,
            variants=variants,
            epochs=epochs,
            seed=seed,
            text=text,
        )
    )


@cache_app.command("info")
def cache_info(
    path: Annotated[Path, typer.Argument(help="The cache folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Rows, splits, labels, statuses, arrays (shapes, dtypes), backbone and recipes."""
    from roadwork_cache.reports.tables import cache_info_table
    from roadwork_cache.store.cache import Cache, to_json

    info = Cache.open(path).info()
    if json_out:
        typer.echo(to_json(info))
    else:
        from rich.console import Console

        Console(width=None if sys.stdout.isatty() else 120).print(cache_info_table(info))


@cache_app.command("verify")
def cache_verify(
    path: Annotated[Path, typer.Argument(help="The cache folder.")],
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Mark damaged shards as not done, so that re-running `roadwork "
            "extract` with the same arguments recomputes them.",
        ),
    ] = False,
) -> None:
    """Check that every shard is complete, unchanged since written and finite; name what is
    not. Exit 1 when anything is wrong."""
    from roadwork_cache.runtime.progress import console, progress_bar
    from roadwork_cache.store.cache import Cache
    from roadwork_cache.store.verify import repair as repair_cache
    from roadwork_cache.store.verify import verify, verify_arrays

    cache = Cache.open(path, mode="a" if repair else "r")
    with progress_bar() as bar:
        task = bar.add_task(
            "verify", total=len(verify_arrays(cache)) * len(cache.shards()), rate=""
        )
        problems = verify(cache, lambda n: bar.update(task, advance=n))
    if problems:
        for problem in problems:
            console.print(f"[red]✗[/] {problem.message}")
        if repair:
            dropped = repair_cache(cache, problems)
            console.print(f"marked {dropped} damaged shard(s) as not done")
        console.print(
            f"{len(problems)} problem(s) in {path}; re-run `roadwork extract` with "
            "the same arguments to recompute what is missing"
            + ("" if repair else " (after `roadwork cache verify --repair`)")
        )
        raise typer.Exit(1)
    console.print(
        f"[green]✓[/] {path}: {cache.n_rows} rows, {len(cache.shards())} shards x "
        f"{len(cache.variants())} variant(s) + text, all complete and finite"
    )


def main() -> None:
    """Entry point: a UserError is one sentence on stderr and exit status 2."""
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

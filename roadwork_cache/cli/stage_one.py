"""Stage one's commands: `synth`, `extract`, `cache info`, `cache verify`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from roadwork_cache.cli.app import (
    Device,
    Progress,
    Workers,
)


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
    from roadwork_cache.runtime.progress import progress_bar, results
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
    results.print(f"wrote {rows} rows in {len(paths)} shard(s) to {out}")


def extract(
    source: Annotated[
        str,
        typer.Argument(
            help="NATIX parquet shards (a glob such as 'data/\\*.parquet', a folder or a file), or "
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
    normalisation: Annotated[
        str,
        typer.Option(
            help="Pixel statistics of the weights: 'lvd' (ImageNet's, for the LVD-1689M "
            "weights) or 'sat' (mean 0.430, 0.411, 0.296 and std 0.213, 0.156, 0.143, for "
            "the SAT-493M satellite weights). Recorded in the cache; predict follows it."
        ),
    ] = "lvd",
    batch_size: Annotated[int, typer.Option(help="Images per forward (x12 views).")] = 8,
    workers: Workers = None,
    device: Device = "auto",
    compile_backbone: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="Run the backbone under torch.compile (features within float16 rounding of "
            "eager). Off by default: bench/extract.py --compile measures whether its compile "
            "pays back within one shard on your GPU.",
        ),
    ] = False,
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
    masks: Annotated[
        str | None,
        typer.Option(
            help="Roadwork masks as an auxiliary target: 'sam3' (SAM 3 from text prompts, "
            "needs --segmenter) or 'column:NAME' (supplied PNG masks in that parquet or "
            "manifest column). A manifest's 'mask' column is read without this flag."
        ),
    ] = None,
    segmenter: Annotated[
        str | None, typer.Option(help="A local SAM 3 transformers folder (for --masks sam3).")
    ] = None,
    prompts: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated SAM 3 text prompts (default: cones, barrels, barriers, "
            "barricades, road work signs, workers, work vehicles)."
        ),
    ] = None,
    mask_grid: Annotated[
        int, typer.Option(help="Each view's mask coverage on a G x G grid of cells.")
    ] = 4,
    mask_dtype: Annotated[
        str, typer.Option(help="Stored coverage: uint8 (share x 255) or float16.")
    ] = "uint8",
    mask_classes: Annotated[
        str | None,
        typer.Option(
            help="Class ids of indexed masks that are roadwork, e.g. '1,2,5-7' (default: "
            "every non-zero class)."
        ),
    ] = None,
    mask_score: Annotated[
        float, typer.Option(help="SAM 3 instances scoring above this are roadwork.")
    ] = 0.5,
    progress: Progress = True,
) -> None:
    """Run the frozen DINOv3 backbone once over the 12 views of every image into a Zarr cache.

    Re-running on an existing cache resumes: shards already written are skipped, and new
    variants are added without recomputing the old ones. Unreadable images become rows with
    status 'error' and the run goes on. Multi-GPU: torchrun --nproc-per-node N -m
    roadwork_cache.cli extract ... (same arguments). With --masks (or a manifest's 'mask'
    column) each variant's per-view roadwork share is stored beside the features; masks
    added to an existing cache are all that is computed.
    """
    from roadwork_cache.cli.app import at_least, check_flags
    from roadwork_cache.readers.masks import parse_classes
    from roadwork_cache.reports.tables import extract_table
    from roadwork_cache.runtime.progress import console, results
    from roadwork_cache.stages.extract import ExtractConfig, run_extract
    from roadwork_cache.views.variants import parse_variants

    check_flags(
        at_least("--batch-size", batch_size, 1),
        at_least("--shard-rows", shard_rows, 1),
        at_least("--workers", workers, 0),
        at_least("--limit", limit, 1),
        at_least("--view-size", view_size, 16),
    )
    cfg = ExtractConfig(
        source=source,
        cache=cache,
        backbone=backbone,
        weights=weights,
        manifest=manifest,
        view_size=view_size,
        pool=pool,
        normalisation=normalisation,
        batch_size=batch_size,
        workers=workers,
        device=device,
        shard_rows=shard_rows,
        limit=limit,
        variants=parse_variants(variants),
        text=text,
        splits=[x for x in splits.split(",") if x.strip()] if splits else None,
        progress=progress,
        masks=masks,
        segmenter=segmenter,
        prompts=[p.strip() for p in prompts.split(",") if p.strip()] if prompts else None,
        mask_grid=mask_grid,
        mask_dtype=mask_dtype,
        mask_classes=parse_classes(mask_classes),
        mask_score_threshold=mask_score,
        compile=compile_backbone,
    )
    try:
        summary = run_extract(cfg)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # once, not once per torchrun rank
            console.print(
                "interrupted: the shards written so far are kept; re-run the same command to resume"
            )
        raise typer.Exit(130) from None
    if summary is not None:  # rank 0 (or the only process) reports
        results.print(extract_table(summary))


def cache_info(
    path: Annotated[Path, typer.Argument(help="The cache folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Rows, splits, labels, statuses, arrays (shapes, dtypes), backbone and recipes."""
    from roadwork_cache.reports.tables import cache_info_table
    from roadwork_cache.runtime.progress import results
    from roadwork_cache.store.cache import Cache, to_json

    info = Cache.open(path).info()
    if json_out:
        typer.echo(to_json(info))
    else:
        results.print(cache_info_table(info))


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
    from roadwork_cache.runtime.progress import console, progress_bar, results
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
        # A shard never completed is finished by a plain re-run; a damaged one (its marker
        # says done) must first be marked not done, which is what --repair does.
        damaged = [p for p in problems if p.array is not None]
        if repair:
            dropped = repair_cache(cache, problems)
            console.print(f"marked {dropped} damaged shard(s) as not done")
        if damaged and not repair:
            advice = (
                f"{len(damaged)} damaged: run `roadwork cache verify --repair`, then re-run "
                "`roadwork extract` with the same arguments to recompute them"
            )
        else:
            advice = "re-run `roadwork extract` with the same arguments to finish it"
        results.print(f"{len(problems)} problem(s) in {path}; {advice}")
        raise typer.Exit(1)
    results.print(
        f"[green]✓[/] {path}: {cache.n_rows} rows, {len(cache.shards())} shards x "
        f"{len(cache.variants())} variant(s) + text"
        + (f" + masks of {len(cache.mask_variants())}" if cache.mask_variants() else "")
        + ", all complete and finite"
    )

"""The `roadwork` command line: thin, it parses flags and calls a stage."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from roadwork_cache.errors import UserError

app = typer.Typer(
    help="Roadwork / no-roadwork classification on a frozen DINOv3 backbone, as a two-stage "
    "feature cache: `extract` runs the backbone once and stores per-view features; the heads "
    "then train from the cache alone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="Inspect a feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the parquet shards into.")],
    rows: Annotated[int, typer.Option(help="Number of images (rows) to generate.")] = 400,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 0,
    shard_rows: Annotated[int, typer.Option(help="Rows per parquet shard.")] = 256,
    test_fraction: Annotated[float, typer.Option(
        help="Share of rows (whole videos) in the test split.")] = 0.25,
) -> None:
    """Write a synthetic dataset in the exact NATIX parquet format (demo and test data).

    Road scenes are drawn procedurally: roadwork rows have cones, barriers, drums and signs
    (many small and far away), negatives have none; frames come in videos; GPS, tags and
    scene descriptions follow the real data's columns and NULL patterns.
    """
    from roadwork_cache.data.synth import write_synthetic
    from roadwork_cache.progress import console, progress_bar

    with progress_bar() as bar:
        task = bar.add_task("synth", total=rows, rate="")
        paths = write_synthetic(
            out, rows, seed, shard_rows=shard_rows, test_fraction=test_fraction,
            progress=lambda n: bar.update(task, advance=n),
        )
    console.print(f"wrote {rows} rows in {len(paths)} shard(s) to {out}")


@app.command()
def extract(
    source: Annotated[str, typer.Argument(
        help="NATIX parquet shards (a glob such as 'data/*.parquet', a folder or a file), or "
        "an image folder with manifest.csv / manifest.jsonl.")],
    cache: Annotated[Path, typer.Option(help="Cache folder to create or resume.")] = Path(
        "cache/default"),
    backbone: Annotated[str, typer.Option(
        help="Preset: vith16plus, vitl16, vitb16, vits16, or tiny (random weights, for "
        "tests and the demo).")] = "tiny",
    weights: Annotated[str | None, typer.Option(
        help="Local weights: a transformers DINOv3 folder or a timm / Meta .pth / "
        ".safetensors file. Nothing is downloaded.")] = None,
    manifest: Annotated[str | None, typer.Option(
        help="Manifest (.csv / .jsonl with filename, label, ...) for an image folder.")] = None,
    view_size: Annotated[int | None, typer.Option(
        help="Side of each square view in pixels (multiple of 16; default 512, tiny 224).")
    ] = None,
    pool: Annotated[str, typer.Option(
        help="'cls' (CLS token after the final norm) or 'cls+mean' (adds the patch mean).")
    ] = "cls",
    batch_size: Annotated[int, typer.Option(help="Images per forward (x12 views).")] = 8,
    workers: Annotated[int | None, typer.Option(
        help="DataLoader worker processes for decoding (default: 8 on CUDA, 1 on CPU).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    shard_rows: Annotated[int, typer.Option(
        help="Rows per Zarr shard: the unit of writing and of resume.")] = 1024,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows.")] = None,
    text: Annotated[bool, typer.Option(
        help="Embed scene_description with the bundled all-MiniLM-L6-v2.")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run the frozen DINOv3 backbone once over the 12 views of every image into a Zarr cache.

    Re-running on an existing cache resumes: shards already written are skipped. Unreadable
    images become rows with status 'error' and the run goes on.
    """
    from roadwork_cache.progress import console
    from roadwork_cache.stages.extract import ExtractConfig, run_extract, summary_table

    if batch_size < 1 or shard_rows < 1:
        raise UserError("--batch-size and --shard-rows must be at least 1")
    cfg = ExtractConfig(
        source=source, cache=cache, backbone=backbone, weights=weights, manifest=manifest,
        view_size=view_size, pool=pool, batch_size=batch_size, workers=workers, device=device,
        shard_rows=shard_rows, limit=limit, text=text, progress=progress,
    )
    summary = run_extract(cfg)
    console.print(summary_table(summary))


@cache_app.command("info")
def cache_info(
    path: Annotated[Path, typer.Argument(help="The cache folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Rows, splits, labels, statuses, arrays (shapes, dtypes), backbone and recipes."""
    from roadwork_cache.stages.info import cache_info_table
    from roadwork_cache.store import Cache, to_json

    info = Cache.open(path).info()
    if json_out:
        typer.echo(to_json(info))
    else:
        from rich.console import Console

        Console().print(cache_info_table(info))


def main() -> None:
    """Entry point: a UserError is one sentence on stderr and exit status 2."""
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Deployment's commands: `predict`, `export` and `demo`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from roadwork_cache.cli.app import Device, Progress, Workers, at_least, check_flags

# Options predict and export share: the model's backbone and its TTA.
ModelWeights = Annotated[
    str | None,
    typer.Option(
        help="Backbone weights (transformers folder or .pth / .safetensors file); default: the "
        "file the model's cache was made with, if it is on this machine. Not needed for tiny."
    ),
]
ModelBackbone = Annotated[
    str | None,
    typer.Option(help="Backbone preset (default: the one recorded by the model's cache)."),
]
TtaVariants = Annotated[
    str | None,
    typer.Option(
        help="TTA variants, e.g. 'clean,tta:4' (default: those FOODS was fitted on, else "
        "clean,tta:8)."
    ),
]


def predict(
    images: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (searched recursively) or quoted globs; JPEG, PNG, WebP."
        ),
    ],
    model: Annotated[Path, typer.Option(help="A `train-head` run folder or an `ensemble` folder.")],
    weights: ModelWeights = None,
    backbone: ModelBackbone = None,
    tta: Annotated[
        bool,
        typer.Option(
            help="On-the-fly TTA: score the clean image and its tta-K variants and combine them by "
            "FOODS when the model folder holds foods.safetensors (from `roadwork tta`), else by "
            "their mean."
        ),
    ] = False,
    tta_variants: TtaVariants = None,
    batch_size: Annotated[
        int, typer.Option(help="Images per forward (x variants x 12 views).")
    ] = 8,
    workers: Workers = None,
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
    from roadwork_cache.runtime.progress import console, results
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
        results.print(answers_table(answers, predictor))
    failed = sum(a.error is not None for a in answers)
    if failed:
        console.print(f"{failed} of {len(answers)} image(s) could not be read")
        raise typer.Exit(1)


def export(
    model: Annotated[
        Path | None, typer.Option(help="A `train-head` run folder or an `ensemble` folder.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="The folder to write: a complete Hugging Face model repository."),
    ] = None,
    weights: ModelWeights = None,
    backbone: ModelBackbone = None,
    tta: Annotated[
        bool | None,
        typer.Option(
            "--tta/--no-tta",
            help="The detector's default (off unless given): score the TTA variants too (FOODS "
            "when the model folder holds foods.safetensors, else their mean); slower. A miner "
            "can override it with RoadworkDetector(tta=...). With --check: on or off for the "
            "timing (default: the export's default).",
        ),
    ] = None,
    tta_variants: TtaVariants = None,
    name: Annotated[
        str | None, typer.Option(help="model_card.json model_name (default: from the model).")
    ] = None,
    description: Annotated[
        str | None, typer.Option(help="model_card.json description (default: what it is).")
    ] = None,
    version: Annotated[str, typer.Option(help="model_card.json version, X.Y.Z.")] = "1.0.0",
    hotkey: Annotated[
        str | None,
        typer.Option(help="model_card.json submitted_by: the miner's hotkey (ss58 address)."),
    ] = None,
    hf_repo: Annotated[
        str | None,
        typer.Option(
            help="The Hugging Face repository you will upload to (user/name): written into the "
            "miner's YAML (miner/roadwork_dinov3.yaml)."
        ),
    ] = None,
    device: Device = "auto",
    verify: Annotated[
        bool,
        typer.Option(
            help="Load the written detector.py and compare it with `predict` on two sample "
            "challenges (on a CPU, minutes for a large backbone)."
        ),
    ] = True,
    force: Annotated[bool, typer.Option(help="Replace an earlier export in --out.")] = False,
    progress: Progress = True,
    check: Annotated[
        Path | None,
        typer.Option(
            help="Check an exported folder instead: verify its files, load detector.py, time it "
            "on challenge-like images and print p50 / p95 latency, device and dtype."
        ),
    ] = None,
    runs: Annotated[int, typer.Option(help="--check: timed images.")] = 20,
    max_variants: Annotated[
        int | None, typer.Option(help="--check: keep the first N TTA variants.")
    ] = None,
) -> None:
    """Write a model as a folder a StreetVision miner publishes on Hugging Face.

    The folder holds the backbone in timm's layout (converted from the transformers or Meta
    format given), the heads, one config.json (architecture, combination, folded threshold,
    TTA and FOODS settings, view layout, sha256 of every file), model_card.json with the
    subnet's fields, a README model card and detector.py: a `RoadworkDetector` that needs only
    torch, timm, safetensors, numpy and pillow, and answers what `roadwork predict` answers.
    With `--check DIR`, load such a folder and time it.
    """
    from rich.console import Console

    from roadwork_cache.runtime.errors import UserError
    from roadwork_cache.runtime.progress import console

    if check is not None:
        from roadwork_cache.reports.tables import check_table
        from roadwork_cache.stages.export import CheckOptions, run_check

        summary = run_check(CheckOptions(check, runs, device, tta, max_variants))
        Console().print(check_table(summary))
        return
    if model is None or out is None:
        raise UserError("export needs --model and --out (or --check DIR to check an export)")
    from roadwork_cache.reports.tables import export_table
    from roadwork_cache.stages.export import ExportOptions, run_export
    from roadwork_cache.views.variants import parse_variants

    summary = run_export(
        ExportOptions(
            model=model,
            out=out,
            weights=weights,
            backbone=backbone,
            tta=bool(tta),
            tta_variants=parse_variants(tta_variants) if tta_variants else None,
            name=name,
            description=description,
            version=version,
            hotkey=hotkey,
            hf_repo=hf_repo,
            device=device,
            verify=verify,
            force=force,
            progress=progress,
        )
    )
    for note in summary.notes:
        console.print(f"note: {note}")
    Console().print(export_table(summary))


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

    check_flags(
        at_least("--rows", rows, 80),  # fewer leaves a label in one video (checked)
        at_least("--view-size", view_size, 16),
        at_least("--epochs", epochs, 1),
    )
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

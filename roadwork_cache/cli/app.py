"""The typer application and the options several commands share, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

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


app.add_typer(cache_app, name="cache")

"""The typer application and the options several commands share, declared once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from roadwork_cache.runtime.errors import UserError
from roadwork_cache.runtime.version import __version__


def _hide_flag_types(params: list[Any]) -> None:
    """A flag takes no value: no `<bool>` beside it in the help."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class RoadworkGroup(TyperGroup):
    """typer's group, with help that shows no type beside a flag."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _hide_flag_types(command.get_params(ctx))
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _hide_flag_types(self.get_params(ctx))
        super().format_help(ctx, formatter)


app = typer.Typer(
    cls=RoadworkGroup,
    help="Roadwork / no-roadwork classification on a frozen DINOv3 backbone, as a two-stage "
    "feature cache: `extract` runs the backbone once and stores per-view features; the heads "
    "then train from the cache alone.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown: paragraphs reflow instead of keeping source line breaks. Help text therefore
    # escapes markdown's own characters (`aug-\*`), or they vanish.
    rich_markup_mode="markdown",
)


cache_app = typer.Typer(cls=RoadworkGroup, help="Inspect a feature cache.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"roadwork-cache {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


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


Workers = Annotated[
    int | None,
    typer.Option(help="DataLoader worker processes for decoding (default: 8 on CUDA, 1 on CPU)."),
]


CacheFolder = Annotated[Path, typer.Option(help="Cache folder made by `roadwork extract`.")]


BatchSize = Annotated[int, typer.Option(help="Rows per step.")]


Patience = Annotated[
    int, typer.Option(help="Epochs without a better validation MCC before stopping.")
]


TrainVariants = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated cached variants drawn per row per epoch (default: clean, "
        "aug-\\*, natix-\\*); in an ensemble a member's own 'variants' wins."
    ),
]


ConfigFile = Annotated[
    Path | None,
    typer.Option(
        help="JSON or YAML file with 'head' and 'train' sections (under every ensemble "
        "member); flags override it."
    ),
]


Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace what --out holds (otherwise a used folder is refused)."
    ),
]


# ---- flag checks: one sentence naming the flag that is wrong, before any work -------------------

Rule = tuple[str, Any, Callable[[Any], bool], str]


def at_least(flag: str, value: Any, low: float) -> Rule:
    return flag, value, lambda v: v >= low, f"be at least {low}"


def above(flag: str, value: Any, low: float) -> Rule:
    return flag, value, lambda v: v > low, f"be above {low}"


def between(flag: str, value: Any, low: float, high: float, high_open: bool = False) -> Rule:
    if high_open:
        return flag, value, lambda v: low <= v < high, f"lie in [{low}, {high})"
    return flag, value, lambda v: low <= v <= high, f"lie in [{low}, {high}]"


def check_flags(*rules: Rule) -> None:
    """Refuse the first flag whose value breaks its rule (None: not given, not checked)."""
    for flag, value, ok, rule in rules:
        if value is not None and not ok(value):
            raise UserError(f"{flag} must {rule}, not {value}")


app.add_typer(cache_app, name="cache")


def parse_brackets(text: str) -> tuple[tuple[float, float], ...]:
    """--gps-brackets '50:5,200:2.5' -> ((50.0, 5.0), (200.0, 2.5)): km, weight."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return tuple((float(km), float(w)) for km, w in pairs)
    except ValueError:
        raise UserError(f"--gps-brackets {text!r} must look like '50:5,200:2.5,500:1'") from None


def read_config_file(path: Path) -> dict:
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


def gps_and_leakage(
    gps_brackets: str, gps_beyond: float, leak_bound: float, allow_leaky: bool
) -> dict[str, Any]:
    """The GPS-weighting and leakage flags train-head and ensemble share, checked, as the
    options' fields."""
    check_flags(between("--leak-bound", leak_bound, 0, 1), at_least("--gps-beyond", gps_beyond, 0))
    return {
        "gps_brackets": parse_brackets(gps_brackets),
        "gps_beyond": gps_beyond,
        "leak_bound": leak_bound,
        "allow_leaky": allow_leaky,
    }


def layered(
    ctx: typer.Context, file_values: dict[str, Any], flags: dict[str, tuple[str, Any]]
) -> dict[str, Any]:
    """One config section: the flags' defaults, then what the --config file sets, then the
    flags given on the command line. `flags`: field -> (parameter name, value)."""
    out = {field: value for field, (_, value) in flags.items()}
    out.update(file_values)
    for field, (param, value) in flags.items():
        source = ctx.get_parameter_source(param)
        # by name: typer may carry its own click, whose enum is another class
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            out[field] = value
    return out

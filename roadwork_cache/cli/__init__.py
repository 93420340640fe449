"""The `roadwork` command line: thin, each command parses its flags and calls a stage.

The commands are registered here, in the order the data flows (that is the order of
`roadwork --help`); the typer apps and shared options are in cli/app.py.
"""

from __future__ import annotations

import sys

import typer

from roadwork_cache.cli import deploy, ensemble, stage_one, stage_two
from roadwork_cache.cli.app import app, cache_app
from roadwork_cache.runtime.errors import UserError

app.command("synth")(stage_one.synth)
app.command("extract")(stage_one.extract)
cache_app.command("info")(stage_one.cache_info)
cache_app.command("verify")(stage_one.cache_verify)
app.command("train-head")(stage_two.train_head)
app.command("report")(stage_two.report)
app.command("ensemble")(ensemble.ensemble)
app.command("tta")(ensemble.tta)
app.command("predict")(deploy.predict)
app.command("export")(deploy.export)
app.command("demo")(deploy.demo)


def main() -> None:
    """Entry point: a UserError is one sentence on stderr and exit status 2."""
    try:
        app()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)

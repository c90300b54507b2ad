"""The ``tessera`` command: run the service (embedded or as separate parts), the demo, and model tools.

This package builds the root command from one module per command group (``service``, ``demo``, ``models``,
``keys``, ``evaluation``, ``shapes``, ``concepts``); ``main`` is the console script's entry point."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from services.cli.concepts import concepts_app
from services.cli.demo import demo
from services.cli.evaluation import eval_app
from services.cli.keys import keys_app
from services.cli.models import models_app
from services.cli.service import api, serve, worker
from services.cli.shapes import shapes_app
from services.failures import EXIT_CODES_HELP, explain

# Locals stay out of tracebacks: they hold API keys and URLs with passwords.
app = typer.Typer(
    help="Tessera: multi-concept image personalization as a service.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(eval_app, name="eval")
app.add_typer(shapes_app, name="shapes")


def _package_version() -> str:
    try:
        return version("tessera")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tessera {_package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    _debug: Annotated[
        bool, typer.Option("--debug", help="On an expected failure, show the traceback instead of one line.")
    ] = False,
) -> None:
    """Tessera: multi-concept image personalization as a service."""


for _command in (serve, api, worker, demo):
    app.command()(_command)
app.add_typer(concepts_app, name="concepts")


def main(argv: Sequence[str] | None = None) -> None:
    """The ``tessera`` entry point: an expected failure (Redis or the API unreachable, a refused key, missing
    weights, a refused request) is one line on stderr and its own exit code (``services.failures``); ``--debug``
    shows the traceback instead."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="tessera")
    except Exception as exc:
        failure = explain(exc)
        if failure is None or "--debug" in args:
            raise
        typer.echo(f"tessera: {failure.message}", err=True)
        sys.exit(failure.code)

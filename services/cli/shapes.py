"""The ``tessera shapes`` group: train, evaluate and calibrate the shapes toy world (``tessera_shapes``).

Every argument, --help included, goes to the tool's own parser; ``tessera_shapes`` is imported only inside the
commands, so the rest of the command line never loads it."""

from __future__ import annotations

import typer

from services.cli import common
from services.cli.common import FORWARD_ALL

shapes_app = typer.Typer(
    help="The shapes toy world (tessera_shapes): train its preset, evaluate it, calibrate its scorer.",
    no_args_is_help=True,
)


@shapes_app.command("train", context_settings=FORWARD_ALL)
def shapes_train(ctx: typer.Context) -> None:
    """Train the shapes preset from scratch into core/ml/presets/shapes (--help lists every option)."""
    from tessera_shapes.training import main as train_main

    common.configure_logging()
    train_main(list(ctx.args), prog=ctx.command_path)


@shapes_app.command("eval", context_settings=FORWARD_ALL)
def shapes_eval(ctx: typer.Context) -> None:
    """Measure the shipped shapes model: base accuracy, concept fidelity, leakage, fusion binding.

    Writes eval/shapes.json and eval/shapes.png and prints one table; --quick runs the subset the tests run
    (--help lists every option).
    """
    from tessera_shapes.report import main as eval_main

    eval_main(list(ctx.args), prog=ctx.command_path)


@shapes_app.command("calibrate", context_settings=FORWARD_ALL)
def shapes_calibrate(ctx: typer.Context) -> None:
    """Calibrate the shapes scorer on true drawings and near misses; prints thresholds and shares as JSON."""
    from tessera_shapes.calibration import main as calibrate_main

    calibrate_main(list(ctx.args), prog=ctx.command_path)

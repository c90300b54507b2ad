"""The ``tessera models`` group: build, check, download and train model presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import FORWARD_ALL, check_preset
from services.cli.shapes import shapes_train

models_app = typer.Typer(help="Model presets: build, check and train them.", no_args_is_help=True)


@models_app.command("init")
def models_init(
    preset: Annotated[str, typer.Option(help="tiny | shapes | sd15.", callback=check_preset)] = "tiny",
    root: Annotated[Path | None, typer.Option(help="Models root; default TESSERA_MODELS__ROOT.")] = None,
) -> None:
    """Build the tiny preset (deterministic), or check that a preset's folder is complete."""
    from core.config import get_settings
    from core.ml.components import init_preset

    path = init_preset(preset, root or get_settings().models.root)
    typer.echo(f"preset {preset} ready in {path}")


@models_app.command("pull")
def models_pull(
    preset_name: Annotated[
        str | None, typer.Argument(metavar="[PRESET]", help="The preset to download: sd15 (the default).")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Same as the PRESET argument (the older form).")] = None,
    dest: Annotated[Path | None, typer.Option(help="Models root; default TESSERA_MODELS__ROOT.")] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="Only these parts: base, sam, ip-adapter, controlnet, eval.")
    ] = None,
) -> None:
    """Download a preset's weights (needs the internet) into the layout the loaders expect, verified.

    `tessera models pull sd15` or `tessera models pull --preset sd15`.
    """
    import os

    from core.config import get_settings
    from core.ml.pull import HubSource, pull_preset

    if preset_name is not None and preset is not None and preset_name != preset:
        raise typer.BadParameter(f"PRESET {preset_name!r} and --preset {preset!r} disagree", param_hint="--preset")
    preset = preset_name or preset or "sd15"

    path = pull_preset(
        preset,
        dest or get_settings().models.root,
        source=HubSource(token=os.environ.get("HF_TOKEN")),
        include=include or None,
    )
    typer.echo(f"preset {preset} in {path}")


# The name this command had before the shapes group; scripts and habits still use it.
models_app.command("train-shapes", context_settings=FORWARD_ALL, help="Same as `tessera shapes train`.")(shapes_train)

"""The ``tessera demo`` command: train two concepts and generate one image with both, over HTTP."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from core.rules import MAX_REQUEST_SEED
from services.cli.common import check_preset


def demo(
    url: Annotated[str | None, typer.Option(help="A running service; omitted = start an embedded one.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="TESSERA_API_KEY")] = None,
    data_dir: Annotated[Path, typer.Option()] = Path("data/demo"),
    preset: Annotated[
        str, typer.Option(help="Model preset: shapes (trained toy world) | tiny | sd15.", callback=check_preset)
    ] = "shapes",
    out: Annotated[
        Path, typer.Option(help="Where to save the generated images and masks (one folder per job).")
    ] = Path("data/demo-output"),
    seed: Annotated[int, typer.Option(min=0, max=MAX_REQUEST_SEED, help="Seed of the generated scene.")] = 7,
) -> None:
    """Upload sample images, train two concepts, generate one image with both, over HTTP."""
    from services.demo import run_demo
    from services.embedded import Stack

    if url is not None:
        if api_key is None:
            raise typer.BadParameter("--api-key (or TESSERA_API_KEY) is required with --url", param_hint="--api-key")
        sys.exit(run_demo(url, api_key, out=out, preset=preset, seed=seed, service_stays_up=True))
    with Stack(data_dir=data_dir, preset=preset) as stack:
        typer.echo(f"embedded service at {stack.url} (logs in {stack.data_dir / 'logs'})")
        code = run_demo(stack.url, stack.api_key, out=out, preset=preset, seed=seed)
    sys.exit(code)

"""The ``tessera eval`` group: measure quality (concept fidelity, prompt following, leakage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import FORWARD_ALL
from services.cli.shapes import shapes_eval

eval_app = typer.Typer(help="Measure quality: concept fidelity, prompt following, leakage.", no_args_is_help=True)

# The name this command had before the shapes group; scripts and habits still use it.
eval_app.command("shapes", context_settings=FORWARD_ALL, help="Same as `tessera shapes eval`.")(shapes_eval)


@eval_app.command("concept")
def eval_concept(
    encoders: Annotated[Path, typer.Option(help="Folder with clip-vit-b32/ and dino-vits16/.")],
    generated: Annotated[Path, typer.Option(help="Folder of generated images.")],
    references: Annotated[Path, typer.Option(help="Folder of the concept's training images.")],
    prompt: Annotated[
        str, typer.Option(help='The prompt the images were generated from, e.g. "a <corgi> on the beach".')
    ],
    class_word: Annotated[str, typer.Option(help="The concept's class word (replaces <name> for CLIP-T).")],
) -> None:
    """CLIP-T, CLIP-I and DINO of generated images against a concept's references (Custom Diffusion protocol)."""
    import json

    from core.ml.metrics import run_concept_eval

    scores = run_concept_eval(encoders, generated, references, prompt, class_word)
    typer.echo(json.dumps(scores, indent=2))

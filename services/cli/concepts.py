"""The ``tessera concepts`` group: diagnostics of trained concepts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import check_preset

concepts_app = typer.Typer(help="Trained concepts: diagnostics.", no_args_is_help=True)


@concepts_app.command("diagnose")
def concepts_diagnose(
    adapter: Annotated[Path, typer.Argument(help="The concept's adapter (.safetensors, or a Mix-of-Show .pth).")],
    images: Annotated[Path, typer.Option(help="Folder of held-out images of the concept (.png/.jpg).")],
    masks: Annotated[
        Path | None,
        typer.Option(help="Folder of masks with the images' file names (.png, white = concept); default: computed."),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="Model preset the adapter was trained on.", callback=check_preset)
    ] = "tiny",
    root: Annotated[Path | None, typer.Option(help="Models root; default TESSERA_MODELS__ROOT.")] = None,
    caption: Annotated[
        str | None, typer.Option(help='Caption with <concept>; default "a photo of a <concept>".')
    ] = None,
    class_word: Annotated[str, typer.Option(help="Class word, for a Mix-of-Show .pth (it does not store one).")] = "",
    seed: Annotated[int, typer.Option(help="Seed of the noise draws.")] = 0,
) -> None:
    """Attention-in-mask of a trained concept on held-out images, per resolution (share of its attention on it)."""
    import json

    import PIL.Image

    from core.config import get_settings
    from core.ml.components import load_components
    from core.ml.edlora.adapter import load_adapter
    from core.ml.edlora.diagnostics import measure_attention_in_mask
    from core.ml.edlora.mixofshow import load_mixofshow_edlora
    from core.ml.masks.sam import load_segmenter
    from core.ml.masks.segmenter import compute_masks

    models_root = root or get_settings().models.root
    components = load_components(preset, models_root)
    if adapter.suffix == ".pth":
        weights = load_mixofshow_edlora(adapter, class_word=class_word, base_model_id=components.base_model_id)
    else:
        weights = load_adapter(adapter)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not files:
        raise typer.BadParameter(f"no .png/.jpg images in {images}", param_hint="--images")
    pictures = [PIL.Image.open(p).convert("RGB") for p in files]
    if masks is not None:
        concept_masks = [PIL.Image.open(masks / f"{p.stem}.png").convert("L") for p in files]
    else:
        segmenter = load_segmenter(preset, models_root)
        concept_masks = [m.concept_image() for m in compute_masks(segmenter, pictures)]
    report = measure_attention_in_mask(components, weights, pictures, concept_masks, seed=seed, caption=caption)
    typer.echo(f"concept <{weights.concept_name}> on {report.num_images} images, timesteps {list(report.timesteps)}")
    for side, share in report.per_resolution.items():
        typer.echo(f"  {side}x{side} latent cells: attention-in-mask {share:.3f}")
    typer.echo(f"  overall: {report.overall:.3f}")
    typer.echo(json.dumps(report.as_dict()))

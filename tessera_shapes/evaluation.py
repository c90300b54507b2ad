"""Measures a shapes preset: base-model accuracy by prompt set, and VAE fidelity on held-out concepts.

``python -m tessera_shapes.evaluation`` samples the shipped preset with the stock ``StableDiffusionPipeline``
and DPM-Solver++, scores every image with :mod:`tessera_shapes.scorer` and prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from tessera_shapes import captioning, drawing, sampling, world
from tessera_shapes.scorer import ImageScore, score_image
from tessera_shapes.training import PRESET_DIR, psnr_db, reconstruct

logger = logging.getLogger(__name__)


def load_preset_pipeline(
    directory: Path = PRESET_DIR, *, dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """Builds a ``StableDiffusionPipeline`` from the preset's parts, offline, with DPM-Solver++ sampling."""
    vae = AutoencoderKL.from_pretrained(directory, subfolder="vae", torch_dtype=dtype, local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(directory, subfolder="unet", torch_dtype=dtype, local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder", dtype=dtype, local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer", local_files_only=True)
    scheduler = DPMSolverMultistepScheduler.from_pretrained(directory, subfolder="scheduler", local_files_only=True)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def single_prompts() -> list[str]:
    """The 36 one-object prompts: 12 base objects, centred and at each side."""
    return [captioning.caption_for([o.at(p)]) for o in world.BASE_OBJECTS for p in ("center", "left", "right")]


def class_word_prompts() -> list[str]:
    """The 6 colourless side prompts, ``"a triangle on the right"``: does the model place a shape by its words?"""
    return [
        captioning.caption_for([world.ObjectSpec(world.ANY_COLOUR, s, p)]) for s in world.BASE_SHAPES for p in SIDES
    ]


SIDES = ("left", "right")


def pair_prompts(*, held_out: bool | None = None, right_first: bool = False) -> list[str]:
    """Left/right pairs of base objects: all 144, or only those (not) held out of training.

    Args:
        right_first: name the right-hand object first (``"a blue square on the right and a red circle on the
            left"``), the order a model that reads words by their index gets wrong.
    """
    pairs = [(a.at("left"), b.at("right")) for a in world.BASE_OBJECTS for b in world.BASE_OBJECTS]
    if held_out is not None:
        pairs = [p for p in pairs if (p in world.HELD_OUT_PAIRS) == held_out]
    return [captioning.caption_for(p[::-1] if right_first else p) for p in pairs]


def generate(
    pipeline: StableDiffusionPipeline,
    prompts: Sequence[str],
    *,
    seed: int,
    guidance_scale: float = 4.0,
    num_inference_steps: int = 20,
    batch_size: int = 64,
) -> np.ndarray:
    """Samples one image per prompt, reproducibly from ``seed``; uint8 ``(len(prompts), 64, 64, 3)``."""
    out = []
    for start in range(0, len(prompts), batch_size):
        generator = torch.Generator().manual_seed(seed + start)
        images = pipeline(
            prompt=list(prompts[start : start + batch_size]),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="np",
        ).images
        out.append((np.asarray(images) * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


@dataclass(frozen=True)
class SetScore:
    """Accuracy over one prompt set, with a 95% Wilson interval on the fully-correct rate."""

    n: int
    correct: float
    correct_low: float
    correct_high: float
    colour: float
    shape: float
    position: float
    leakage: float
    position_swap: float
    extra_objects: float


def _wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # The interval always holds p itself; at p = 0 or 1 float rounding would otherwise leave it a hair outside.
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def summarise(scores: Sequence[ImageScore]) -> SetScore:
    """Collapses per-image verdicts into rates; trait rates are per expected object."""
    verdicts = [v for s in scores for v in s.objects]
    n, hits = len(scores), sum(s.correct for s in scores)
    low, high = _wilson(hits, n)
    return SetScore(
        n=n,
        correct=hits / max(1, n),
        correct_low=low,
        correct_high=high,
        colour=sum(v.colour_ok for v in verdicts) / max(1, len(verdicts)),
        shape=sum(v.shape_ok for v in verdicts) / max(1, len(verdicts)),
        position=sum(v.position_ok for v in verdicts) / max(1, len(verdicts)),
        leakage=sum(s.leakage for s in scores) / max(1, n),
        position_swap=sum(s.position_swap for s in scores) / max(1, n),
        extra_objects=sum(s.extra_objects > 0 for s in scores) / max(1, n),
    )


def evaluate_base_model(
    pipeline: StableDiffusionPipeline,
    *,
    single_repeats: int = 6,
    pair_repeats: int = 2,
    seed: int = 1234,
    guidance_scale: float = 4.0,
    num_inference_steps: int = 20,
) -> dict[str, SetScore]:
    """Samples and scores single-object prompts (36 x ``single_repeats``), colourless side prompts
    (6 x ``4 * single_repeats``) and pairs in both orders (2 x 144 x ``pair_repeats``).

    Returns:
        scores for ``single``, ``single_center``, ``single_side``, ``class_word_side``, ``pair`` (both orders),
        ``pair_left_first``, ``pair_right_first``, ``pair_seen`` and ``pair_held_out``.
    """
    sets = {
        "single": single_prompts() * single_repeats,
        "class_word_side": class_word_prompts() * (4 * single_repeats),
        "pair_left_first": pair_prompts() * pair_repeats,
        "pair_right_first": pair_prompts(right_first=True) * pair_repeats,
    }
    results: dict[str, list[tuple[str, ImageScore]]] = {}
    for offset, (name, prompts) in enumerate(sets.items()):
        images = generate(
            pipeline,
            prompts,
            seed=seed + 100_000 * offset,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
        )
        results[name] = [
            (p, score_image(img, captioning.parse_caption(p))) for p, img in zip(prompts, images, strict=True)
        ]
    held = set(pair_prompts(held_out=True)) | set(pair_prompts(held_out=True, right_first=True))
    pairs = results["pair_left_first"] + results["pair_right_first"]
    groups = {
        "single": [s for _, s in results["single"]],
        "single_center": [s for p, s in results["single"] if " on the " not in p],
        "single_side": [s for p, s in results["single"] if " on the " in p],
        "class_word_side": [s for _, s in results["class_word_side"]],
        "pair": [s for _, s in pairs],
        "pair_left_first": [s for _, s in results["pair_left_first"]],
        "pair_right_first": [s for _, s in results["pair_right_first"]],
        "pair_seen": [s for p, s in pairs if p not in held],
        "pair_held_out": [s for p, s in pairs if p in held],
    }
    return {name: summarise(scores) for name, scores in groups.items()}


@dataclass(frozen=True)
class ConceptFidelity:
    """How well the VAE reproduces one held-out concept: PSNR, object colour drift, scorer verdicts."""

    psnr_db: float
    rgb_drawn: tuple[int, int, int]
    rgb_reconstructed: tuple[int, int, int]
    colour_distance: float  # Euclidean RGB distance of the two mean object colours
    scorer_correct: float  # share of reconstructions the scorer judges fully correct


def vae_fidelity(vae: AutoencoderKL, *, images_per_concept: int = 24, seed: int = 99) -> dict[str, ConceptFidelity]:
    """Reconstructs drawn images of each held-out concept (all positions) and compares them to the drawings.

    The object colour is the mean over pixels fully inside the object's solid colour (stripes excluded).
    """
    report: dict[str, ConceptFidelity] = {}
    for concept in world.HELD_OUT_CONCEPTS:
        rng = np.random.default_rng([seed, len(report)])
        scenes = [
            sampling.place_objects((concept.spec.at(world.POSITIONS[i % 3]),), rng) for i in range(images_per_concept)
        ]
        drawn = np.stack([np.asarray(drawing.render_scene(s)) for s in scenes])
        recon = reconstruct(vae, drawn)
        masks = []
        for scene in scenes:
            (obj,) = scene.objects
            inside = drawing.shape_coverage(obj.spec.shape, obj.box) >= 0.99
            masks.append(inside & (np.abs(np.asarray(drawing.render_scene(scene), np.int32) - obj.rgb).max(-1) < 30))
        mask = np.stack(masks)
        before, after = drawn[mask].mean(axis=0), recon[mask].mean(axis=0)
        verdicts = [score_image(r, s.specs).correct for r, s in zip(recon, scenes, strict=True)]
        report[concept.name] = ConceptFidelity(
            psnr_db=psnr_db(drawn, recon),
            rgb_drawn=(round(before[0]), round(before[1]), round(before[2])),
            rgb_reconstructed=(round(after[0]), round(after[1]), round(after[2])),
            colour_distance=float(np.linalg.norm(before - after)),
            scorer_correct=sum(verdicts) / len(verdicts),
        )
    return report


def decoder_ceiling(
    vae: AutoencoderKL,
    concepts: Sequence[world.Concept],
    pairs: Sequence[tuple[world.Concept, world.Concept]] = (),
    *,
    images_per_cell: int = 24,
    seed: int = 98,
) -> dict[str, tuple[int, int]]:
    """The best a generator could score: drawn scenes through the VAE (posterior mean), judged by the scorer.

    Cells: ``"<concept>.<position>"`` for each concept alone at each position, and ``"<left>+<right>"`` for each
    pair scene (left concept on the left, right concept on the right). A fusion figure above its cell's ceiling
    would mean the scorer, not the model, is wrong.

    Returns:
        per cell ``(scorer-correct reconstructions, images)``.
    """
    cells: dict[str, list[tuple[world.ObjectSpec, ...]]] = {}
    for concept in concepts:
        for position in world.POSITIONS:
            cells[f"{concept.name}.{position}"] = [(concept.spec.at(position),)] * images_per_cell
    for left, right in pairs:
        cells[f"{left.name}+{right.name}"] = [(left.spec.at("left"), right.spec.at("right"))] * images_per_cell
    result: dict[str, tuple[int, int]] = {}
    for index, (name, specs) in enumerate(cells.items()):
        scenes = [sampling.place_objects(s, sampling.scene_rng(seed + index, i)) for i, s in enumerate(specs)]
        drawn = np.stack([np.asarray(drawing.render_scene(scene)) for scene in scenes])
        recon = reconstruct(vae, drawn)
        hits = sum(score_image(r, scene.specs).correct for r, scene in zip(recon, scenes, strict=True))
        result[name] = (hits, len(scenes))
    return result


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    """``python -m tessera_shapes.evaluation``: evaluates a preset folder and prints a JSON report.

    ``prog`` names the command in ``--help``.
    """
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--preset", type=Path, default=PRESET_DIR)
    parser.add_argument("--single-repeats", type=int, default=6)
    parser.add_argument("--pair-repeats", type=int, default=2)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-sampling", action="store_true", help="only measure the VAE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    pipeline = load_preset_pipeline(args.preset)
    report: dict[str, object] = {
        "vae_fidelity": {k: asdict(v) for k, v in vae_fidelity(pipeline.vae).items()},
    }
    base_images = sampling.draw_base_dataset(256, seed=4321)[0]
    report["vae_psnr_base_db"] = psnr_db(base_images, reconstruct(pipeline.vae, base_images))
    if not args.skip_sampling:
        scores = evaluate_base_model(
            pipeline,
            single_repeats=args.single_repeats,
            pair_repeats=args.pair_repeats,
            seed=args.seed,
            guidance_scale=args.guidance_scale,
            num_inference_steps=args.steps,
        )
        report["base_model"] = {k: asdict(v) for k, v in scores.items()}
        report["sampling"] = {"guidance_scale": args.guidance_scale, "steps": args.steps, "seed": args.seed}
    # A command-line entry point: the JSON report is its output.
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(prog="python -m tessera_shapes.evaluation")

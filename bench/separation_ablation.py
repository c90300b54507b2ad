"""Ablation of the attention separation loss: the same concept trained with and without it, attention-in-mask compared.

On the ``shapes`` preset (the only CPU model where attention maps mean something): a held-out concept is drawn
beside a base-world distractor object in every training image, captioned only ``"a <concept>"``, so nothing but
the loss tells the concept's tokens to stay off the distractor. Masks come from the production path
(``ColourSegmenter`` with a point prompt on the concept, which also yields the distractor's mask). Each arm trains
from the same images, masks and seed (the masked diffusion loss is on in every arm, so only the attention terms
differ) and is measured with ``measure_attention_in_mask`` on held-out scenes of the same kind.

    .venv/bin/python -m bench.separation_ablation [--preset shapes] [--models-root DIR] [--seeds 0 1] \
        [--steps 300] [--held-out 16]

Prints one line per arm and seed, then the mean per arm with n (held-out images x seeds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import PIL.Image
import torch

from core.ml.components import load_components
from core.ml.edlora.diagnostics import measure_attention_in_mask
from core.ml.edlora.trainer import train_edlora
from core.ml.masks.segmenter import ColourSegmenter, compute_masks
from core.schemas import MaskPrompt
from tessera_shapes import drawing, sampling, world
from tessera_shapes.personalization import SHAPES_RECIPE, class_word

ARMS: dict[str, dict[str, object]] = {
    "no separation": {"separation_loss_weight": 0.0},
    "leak+sep λ=0.01": {"separation_loss_weight": 0.01},
    "leak+sep λ=0.1": {"separation_loss_weight": 0.1},
    "leak+sep λ=0.3": {"separation_loss_weight": 0.3},
    "leak+sep λ=1": {"separation_loss_weight": 1.0},
    "leak+sep λ=1 t<800": {"separation_loss_weight": 1.0, "separation_max_timestep": 800},
    "leak+sep λ=1 linear-t": {"separation_loss_weight": 1.0, "separation_timestep_weighting": "linear"},
    "leak+sep+fill λ=1": {"separation_loss_weight": 1.0, "separation_fill_weight": 1.0},
}


def scenes(concept: world.Concept, count: int, seed: int) -> tuple[list[PIL.Image.Image], list[MaskPrompt]]:
    """``count`` images of the concept on a random side with a base object on the other, and a point on the concept."""
    images, prompts = [], []
    for i in range(count):
        rng = sampling.scene_rng(seed, i)
        side = "left" if rng.random() < 0.5 else "right"
        other = world.BASE_OBJECTS[int(rng.integers(len(world.BASE_OBJECTS)))]
        scene = sampling.place_objects((concept.spec.at(side), other.at("right" if side == "left" else "left")), rng)
        images.append(drawing.render_scene(scene))
        x, y = scene.objects[0].centre
        prompts.append(MaskPrompt(point=(x / world.RESOLUTION, y / world.RESOLUTION)))
    return images, prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="shapes")
    parser.add_argument("--models-root", type=Path, default=Path("models"))
    parser.add_argument("--concept", default="purple_star")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=SHAPES_RECIPE.training.max_train_steps)
    parser.add_argument("--images", type=int, default=SHAPES_RECIPE.num_images)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), help="names from ARMS")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    components = load_components(args.preset, args.models_root)
    concept = world.concept(args.concept)
    segmenter = ColourSegmenter()
    test_images, test_prompts = scenes(concept, args.held_out, seed=10_000)
    test_masks = [m.concept_image() for m in compute_masks(segmenter, test_images, prompts=test_prompts)]
    results: dict[str, list[float]] = {arm: [] for arm in args.arms}
    per_image: dict[str, int] = dict.fromkeys(args.arms, 0)
    for seed in args.seeds:
        images, prompts = scenes(concept, args.images, seed=seed)
        masks = compute_masks(segmenter, images, prompts=prompts)
        for arm in args.arms:
            config = SHAPES_RECIPE.training.model_copy(
                update={"seed": seed, "max_train_steps": args.steps, **ARMS[arm]}
            )
            started = time.perf_counter()
            weights = train_edlora(
                components,
                images,
                concept_name=concept.name,
                class_word=class_word(concept),
                config=config,
                masks=[m.concept_image() for m in masks],
                other_masks=[m.others_image() for m in masks],
                captions=[f"a <{concept.name}>"] * len(images),
            )
            seconds = time.perf_counter() - started
            report = measure_attention_in_mask(
                components, weights, test_images, test_masks, seed=seed, caption=f"a <{concept.name}>"
            )
            results[arm].append(report.overall)
            per_image[arm] += report.num_images
            sides = " ".join(f"{r}x{r}={v:.3f}" for r, v in report.per_resolution.items())
            print(
                f"seed {seed} {arm:<24} attention-in-mask {report.overall:.3f} ({sides}) train {seconds:.1f}s",
                flush=True,
            )
    print(f"\nconcept {concept.name}, {args.steps} steps, {args.images} training images, preset {args.preset}")
    for arm, values in results.items():
        spread = f" ± {statistics.stdev(values):.3f} (sd over seeds)" if len(values) > 1 else ""
        print(f"{arm:<24} mean attention-in-mask {np.mean(values):.3f}{spread}  n={per_image[arm]} image-runs")


if __name__ == "__main__":
    main()

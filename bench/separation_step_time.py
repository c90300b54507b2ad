"""Training time per step with and without the attention separation loss, measured side by side in one run.

Both arms train the same concept from the same images and masks (so both use the masked diffusion loss); the only
difference is ``separation_loss_weight`` (the default options vs 0), i.e. capturing the concept columns of the
cross-attention probabilities (explicit attention in the captured layers) and computing the loss terms. Arms
alternate, each timed from its own ``on_step`` callbacks after a warm-up (data preparation is not counted).
The requirement is a ratio of at most 1.3.

    .venv/bin/python -m bench.separation_step_time [--preset shapes] [--models-root DIR] [--steps 40] [--repeats 5]

Suite row: ``separation.step_ratio`` (with / without, target <= 1.3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import PIL.Image
import torch

from bench.rows import Row, add_rows_argument, write_rows
from bench.separation_ablation import scenes
from core.ml.components import SDComponents, load_components
from core.ml.edlora.trainer import train_edlora
from core.ml.masks.segmenter import ColourSegmenter, ConceptMasks, compute_masks
from core.progress import Progress
from core.training_options import EDLoRAConfig
from tessera_shapes import world

WARMUP_STEPS = 5


def step_seconds(
    components: SDComponents,
    images: list[PIL.Image.Image],
    masks: list[ConceptMasks],
    config: EDLoRAConfig,
    name: str,
) -> float:
    """Median seconds per optimizer step after the warm-up."""
    stamps: list[float] = []

    def on_step(_: Progress) -> None:
        stamps.append(time.perf_counter())

    train_edlora(
        components,
        images,
        concept_name=name,
        class_word="star",
        config=config,
        masks=[m.concept_image() for m in masks],
        other_masks=[m.others_image() for m in masks],
        captions=[f"a <{name}>"] * len(images),
        on_step=on_step,
    )
    gaps = [b - a for a, b in zip(stamps[WARMUP_STEPS:], stamps[WARMUP_STEPS + 1 :], strict=False)]
    return statistics.median(gaps)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="shapes")
    parser.add_argument("--models-root", type=Path, default=Path("models"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    add_rows_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = WARMUP_STEPS + 4, 1
    torch.set_num_threads(args.threads)
    components = load_components(args.preset, args.models_root)
    concept = world.concept("purple_star")
    images, prompts = scenes(concept, 5, seed=0)
    masks = compute_masks(ColourSegmenter(), images, prompts=prompts)
    side = components.default_resolution
    images = [img.resize((side, side)) for img in images]
    base = EDLoRAConfig(max_train_steps=args.steps, batch_size=args.batch_size, seed=0)
    arms = {"without": base.model_copy(update={"separation_loss_weight": 0.0}), "with": base}
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    for repeat in range(args.repeats):
        for arm, config in arms.items() if repeat % 2 == 0 else reversed(arms.items()):
            times[arm].append(step_seconds(components, images, masks, config, concept.name))
    without, with_loss = statistics.median(times["without"]), statistics.median(times["with"])
    print(f"preset {args.preset} on {components.device}, batch {args.batch_size}, {args.steps} steps x {args.repeats}")
    for arm, value in (("without", without), ("with", with_loss)):
        runs = [round(t * 1000, 1) for t in times[arm]]
        print(f"{arm + ' separation loss:':<26} {value * 1000:.1f} ms/step  (runs: {runs})")
    print(f"ratio with/without: {with_loss / without:.3f}  (requirement: <= 1.3)")
    write_rows(
        [
            Row(
                "separation.step_ratio",
                with_loss / without,
                "x",
                "the same training step without the separation loss (masked diffusion loss in both)",
                "<= 1.3",
                f"Training with the attention separation loss ({args.preset} preset, batch {args.batch_size}): "
                "capturing the concept columns of cross-attention and the loss terms; median s/step over "
                f"{args.repeats} alternating runs.",
            )
        ],
        args.rows,
    )


if __name__ == "__main__":
    main()

"""``eval/shapes.png``: what the fusion figures look like, one block per evaluation pair.

Per pair (left concept, right concept): a row of training examples (the left concept's, then the right one's, as
``personalization.training_examples`` draws them for the first training seed), then one row per fusion method with
its kept samples, each concept's final mask outlined in that concept's colour (left: magenta, right: cyan).
Images are scaled up 3x with nearest-neighbour so single pixels stay visible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw

from tessera_shapes import world
from tessera_shapes.concept_measures import PairScores
from tessera_shapes.personalization import PersonalizationRecipe, training_examples

SCALE = 3
GAP = 4
LABEL_WIDTH = 150
OUTLINE_COLOURS = ((230, 0, 200), (0, 200, 230))
BACKGROUND = (255, 255, 255)


def _outlined(image: np.ndarray, masks: Sequence[PIL.Image.Image]) -> PIL.Image.Image:
    """``image`` (uint8 ``(H, W, 3)``) scaled up, with each mask's boundary drawn in its concept's colour."""
    big = PIL.Image.fromarray(image).resize(
        (image.shape[1] * SCALE, image.shape[0] * SCALE), PIL.Image.Resampling.NEAREST
    )
    pixels = np.asarray(big).copy()
    for mask, colour in zip(masks, OUTLINE_COLOURS, strict=False):
        inside = np.asarray(mask.convert("L").resize(big.size, PIL.Image.Resampling.NEAREST)) > 127
        edge = inside & ~(
            np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1)
        )
        pixels[edge] = colour
    return PIL.Image.fromarray(pixels)


def _row(label: str, tiles: Sequence[PIL.Image.Image], width: int) -> PIL.Image.Image:
    side = world.RESOLUTION * SCALE
    row = PIL.Image.new("RGB", (width, side), BACKGROUND)
    PIL.ImageDraw.Draw(row).text((4, side // 2 - 6), label, fill=(0, 0, 0))
    for i, tile in enumerate(tiles):
        row.paste(tile, (LABEL_WIDTH + i * (side + GAP), 0))
    return row


def render_figure(
    rows: Mapping[str, PairScores], pairs: Sequence[Sequence[str]], *, recipe: PersonalizationRecipe, seed: int
) -> PIL.Image.Image:
    """The evaluation picture: per pair, its examples and one row per fusion method (see the module docstring).

    Args:
        rows: fusion rows as ``eval_runner.run_shapes_eval`` returns them (``PairScores.kept`` holds the samples).
        pairs: ``(left, right)`` concept names, in report order.
        recipe, seed: how the first training seed's examples were drawn (``report`` trains concept ``i`` of
            a pair's concepts with ``seed + i``; the examples shown are drawn the same way).
    """
    side = world.RESOLUTION * SCALE
    count = max(
        [recipe.num_images + recipe.composites, *(len(s.images) for r in rows.values() for s in r.kept.values())]
    )
    width = LABEL_WIDTH + count * (side + GAP)
    blocks: list[PIL.Image.Image] = []
    names = list(dict.fromkeys(name for pair in pairs for name in pair))
    for left, right in pairs:
        key = f"{left}+{right}"
        examples: list[PIL.Image.Image] = []
        for name in (left, right):
            drawn = training_examples(world.concept(name), recipe=recipe, seed=seed + names.index(name))
            examples.extend(_outlined(np.asarray(e.image.convert("RGB")), [e.mask]) for e in drawn[: count // 2])
        lines = [_row(f"{left} | {right}", examples, width)]
        for method, scores in rows.items():
            kept = scores.kept.get(key)
            if kept is not None:
                tiles = [_outlined(image, masks) for image, masks in zip(kept.images, kept.masks, strict=True)]
                lines.append(_row(method, tiles, width))
        blocks.extend(lines)
        blocks.append(PIL.Image.new("RGB", (width, GAP * 3), BACKGROUND))
    height = sum(b.height for b in blocks)
    canvas = PIL.Image.new("RGB", (width, max(1, height)), BACKGROUND)
    y = 0
    for block in blocks:
        canvas.paste(block, (0, y))
        y += block.height
    return canvas

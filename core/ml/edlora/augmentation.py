"""Training views of an image: the centre crop, and Mix-of-Show's random resize/crop/pad with the masks carried along.

Restated from Mix-of-Show's ``HumanResizeCropFinalV3`` (ml-methods §1.5): resize the short side to the training
side; with probability 0.5 take a random square crop (a random-height top crop for portrait images, so heads stay);
then shrink so the long side is at most a random fraction of the side and paste at a random position into a black
canvas. ``valid`` marks the pasted pixels; padding never counts in a loss. Every mask gets exactly the geometry
of its image (nearest-free: masks are resampled bilinearly, so edges stay soft as in Mix-of-Show).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from core.ml.images import image_to_tensor, mask_to_tensor

CROP_PROBABILITY = 0.5
MIN_SCALE = 0.6
"""Smallest long side of a pasted view, as a fraction of the training side."""


@dataclass
class TrainingView:
    """One view of a training image, all at the training side ``R``.

    Args:
        pixels: ``[3, R, R]`` in [-1, 1] (black where padded).
        masks: one ``[1, R, R]`` in [0, 1] per mask given (same order), zero where padded.
        valid: ``[1, R, R]``: 1 on pasted pixels, 0 on padding.
    """

    pixels: torch.Tensor
    masks: list[torch.Tensor]
    valid: torch.Tensor


def centre_view(image: PIL.Image.Image, masks: Sequence[PIL.Image.Image], side: int) -> TrainingView:
    """The plain view: short side resized to ``side``, centre crop (what training used before augmentation)."""
    return TrainingView(
        pixels=image_to_tensor(image, side),
        masks=[mask_to_tensor(m, side, size=image.size) for m in masks],
        valid=torch.ones(1, side, side),
    )


def _rand(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def random_view(
    image: PIL.Image.Image, masks: Sequence[PIL.Image.Image], side: int, generator: torch.Generator
) -> TrainingView:
    """A random resize/crop/pad view; draws only from ``generator`` (same generator state, same view)."""
    rgb = image.convert("RGB")
    layers = [m.convert("L").resize(rgb.size, PIL.Image.Resampling.BILINEAR) for m in masks]
    scale = side / min(rgb.size)
    size = (max(side, round(rgb.width * scale)), max(side, round(rgb.height * scale)))
    rgb = rgb.resize(size, PIL.Image.Resampling.BICUBIC)
    layers = [m.resize(size, PIL.Image.Resampling.BILINEAR) for m in layers]
    if _rand(generator) < CROP_PROBABILITY:
        width, height = size
        left = round(_rand(generator) * (width - side))
        # Portrait: keep the top part, where a person's head is.
        top = round(_rand(generator) * (height - side) * (0.5 if height > width else 1.0))
        box = (left, top, left + side, top + side)
        rgb, layers = rgb.crop(box), [m.crop(box) for m in layers]
    long_side = round(side * (MIN_SCALE + (1.0 - MIN_SCALE) * _rand(generator)))
    factor = long_side / max(rgb.size)
    size = (max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor)))
    rgb = rgb.resize(size, PIL.Image.Resampling.BICUBIC)
    layers = [m.resize(size, PIL.Image.Resampling.BILINEAR) for m in layers]
    left = round(_rand(generator) * (side - size[0]))
    top = round(_rand(generator) * (side - size[1]))

    canvas = np.zeros((side, side, 3), dtype=np.float32) - 1.0  # black in [-1, 1]
    canvas[top : top + size[1], left : left + size[0]] = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    valid = torch.zeros(1, side, side)
    valid[:, top : top + size[1], left : left + size[0]] = 1.0
    pasted = []
    for layer in layers:
        plane = torch.zeros(1, side, side)
        plane[0, top : top + size[1], left : left + size[0]] = torch.from_numpy(
            np.asarray(layer, dtype=np.float32) / 255.0
        )
        pasted.append(plane)
    return TrainingView(torch.from_numpy(canvas).permute(2, 0, 1).contiguous(), pasted, valid)

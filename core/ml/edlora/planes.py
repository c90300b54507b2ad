"""Image planes for compositing: ``[C, H, W]`` float tensors in [0, 1] to and from PIL images, resized, cropped to
the trainer's centre square, and holes filled from their surroundings (``core.ml.edlora.composites`` builds on
these)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` or ``(H, W)`` uint8 → ``[C, H, W]`` float32 in [0, 1]."""
    tensor = torch.from_numpy(np.array(array, dtype=np.float32)) / 255.0  # a copy: PIL's arrays are read-only
    return tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor[None]


def to_image(planes: torch.Tensor) -> PIL.Image.Image:
    """``[3, H, W]`` (RGB) or ``[1, H, W]`` (L) in [0, 1] → uint8 PIL image."""
    array = (planes.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return PIL.Image.fromarray(array[..., 0], "L") if array.shape[-1] == 1 else PIL.Image.fromarray(array, "RGB")


def resize_planes(planes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[C, H, W]`` → ``[C, h, w]`` (``size`` = ``(h, w)``): antialiased bilinear, one kernel for images and masks."""
    if tuple(planes.shape[-2:]) == size:
        return planes
    resized = F.interpolate(planes[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized[0].clamp(0.0, 1.0)


def centre_square(planes: torch.Tensor, side: int) -> torch.Tensor:
    """Short side resized to ``side``, then the centre ``side x side`` crop: ``[C, H, W]`` → ``[C, side, side]``.

    The trainer's view (``core.ml.images.image_to_tensor``) has the same geometry, so a background plate covers
    what the concept's own example shows.
    """
    height, width = planes.shape[-2:]
    factor = side / min(height, width)
    size = (max(side, round(height * factor)), max(side, round(width * factor)))
    resized = resize_planes(planes, size)
    top, left = (size[0] - side) // 2, (size[1] - side) // 2
    return resized[:, top : top + side, left : left + side]


def fill_from_surroundings(pixels: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill unknown pixels from the known ones around them (push-pull over an area-averaged pyramid).

    Args:
        pixels: ``[C, H, W]``.
        known: ``[1, H, W]`` in [0, 1], 1 where ``pixels`` are kept; must have some weight somewhere.

    Returns:
        ``[C, H, W]``: ``known·pixels + (1 − known)·estimate``, where each pyramid level's estimate is its
        known-weighted average blended over the upsampled coarser estimate by how much of the cell is known.
    """
    levels = [(pixels * known, known)]
    while max(levels[-1][1].shape[-2:]) > 1:
        colour, weight = levels[-1]
        height, width = colour.shape[-2:]
        size = ((height + 1) // 2, (width + 1) // 2)
        # Area averages of colour·known and known: their ratio is the mean known colour of the cell.
        levels.append(
            (
                F.interpolate(colour[None], size=size, mode="area")[0],
                F.interpolate(weight[None], size=size, mode="area")[0],
            )
        )
    colour, weight = levels[-1]
    filled = colour / weight.clamp_min(1e-8)
    for colour, weight in reversed(levels[:-1]):
        coarser = F.interpolate(filled[None], size=colour.shape[-2:], mode="bilinear", align_corners=False)[0]
        filled = colour + (1.0 - weight) * coarser
    return filled

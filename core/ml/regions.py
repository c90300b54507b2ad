"""Where each concept goes in the image: normalised boxes, mask images, and the automatic side-by-side layout.

Regions are applied on the latent grid (one cell = ``vae_scale_factor`` pixels, 8 for SD 1.5), so a box edge snaps
to the nearest cell boundary: ``x0 = 0.3`` at 64 latent columns starts at column ``round(0.3 · 64) = 19``. The
pixel masks reported back are the latent masks scaled up, i.e. exactly the region each concept was composed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from core.errors import InvalidRequestError

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)``, normalised to 0..1, ``x0 < x1`` and ``y0 < y1``."""

Region = Box | PIL.Image.Image | None
"""A box, a mask image (white = region, any size: it is stretched over the image), or None (automatic layout)."""


def auto_layout(count: int) -> list[Box]:
    """``count`` equal full-height strips side by side, left to right."""
    return [(i / count, 0.0, (i + 1) / count, 1.0) for i in range(count)]


def check_box(box: Sequence[float], *, field: str) -> Box:
    """Validate a normalised box.

    Raises:
        InvalidRequestError: not 4 finite numbers with ``0 <= x0 < x1 <= 1`` and ``0 <= y0 < y1 <= 1``.
    """
    values = tuple(float(v) for v in box)
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InvalidRequestError(f"{field} must be 4 numbers [x0, y0, x1, y1], got {list(box)}", field=field)
    x0, y0, x1, y1 = values
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise InvalidRequestError(
            f"{field} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {list(values)}", field=field
        )
    return (x0, y0, x1, y1)


def box_mask(box: Box, *, width: int, height: int) -> torch.Tensor:
    """``[height, width]`` bool grid, True in the cells the box covers (edges rounded to the nearest cell)."""
    x0, y0, x1, y1 = box
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)] = True
    return mask


def image_mask(image: PIL.Image.Image, *, width: int, height: int) -> torch.Tensor:
    """``[height, width]`` bool grid from a mask image: a cell is in when its area-average is at least half white."""
    small = image.convert("L").resize((width, height), resample=PIL.Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(small, dtype=np.uint8) >= 128)


def region_masks(
    regions: Sequence[Region],
    *,
    width: int,
    height: int,
    scale_factor: int,
    field: str = "concepts",
) -> tuple[torch.Tensor, list[PIL.Image.Image]]:
    """Latent-grid masks for each concept and the matching full-size mask images.

    Regions that are None share an automatic side-by-side layout, in order.

    Args:
        regions: one per concept.
        width, height: image size in pixels (multiples of ``scale_factor``).
        scale_factor: pixels per latent cell.
        field: request field of the region list, for errors (``"{field}[i].region"``).

    Returns:
        ``(masks, images)``: ``masks`` is ``[K, 1, height // scale_factor, width // scale_factor]`` float32 of 0/1;
        ``images`` are K L-mode ``width x height`` images (255 inside).

    Raises:
        InvalidRequestError: a malformed box, or a region that covers no latent cell.
    """
    latent_w, latent_h = width // scale_factor, height // scale_factor
    auto = iter(auto_layout(sum(r is None for r in regions)))
    grids: list[torch.Tensor] = []
    for i, region in enumerate(regions):
        where = f"{field}[{i}].region"
        if region is None:
            grid = box_mask(next(auto), width=latent_w, height=latent_h)
        elif isinstance(region, PIL.Image.Image):
            grid = image_mask(region, width=latent_w, height=latent_h)
        else:
            grid = box_mask(check_box(region, field=where), width=latent_w, height=latent_h)
        if not bool(grid.any()):
            raise InvalidRequestError(
                f"{where} covers no {scale_factor}x{scale_factor}-pixel latent cell of the {width}x{height} image",
                field=where,
            )
        grids.append(grid)
    if not grids:
        return torch.zeros(0, 1, latent_h, latent_w), []
    masks = torch.stack(grids)[:, None].float()
    full = masks.repeat_interleave(scale_factor, dim=2).repeat_interleave(scale_factor, dim=3)
    images = [PIL.Image.fromarray((m[0].numpy() * 255).astype(np.uint8)) for m in full]
    return masks, images


def layer_grid(height: int, width: int, tokens: int) -> tuple[int, int]:
    """The ``(h, w)`` of a UNet attention layer with ``tokens`` positions on a ``height x width`` latent grid.

    Each UNet level halves the grid, rounding up (a diffusers downsampler with padding 1), 0 to 6 times.

    Raises:
        ValueError: no such halving of the grid has ``tokens`` positions.
    """
    h, w = height, width
    for _ in range(7):
        if h * w == tokens:
            return h, w
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    raise ValueError(f"no downsampling of the {height}x{width} latent grid has {tokens} positions")


def masks_at(masks: torch.Tensor, tokens: int) -> torch.Tensor:
    """Latent-grid masks ``[..., h, w]`` at a layer's resolution: ``[..., tokens]`` bool.

    A layer cell is inside when at least half of the latent cells it covers are (Concept Conductor's 0.5 threshold
    after resizing); at the latent resolution itself the masks are unchanged.
    """
    height, width = int(masks.shape[-2]), int(masks.shape[-1])
    h, w = layer_grid(height, width, tokens)
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, 1, height, width).float()
    small = torch.nn.functional.adaptive_avg_pool2d(flat, (h, w)) >= 0.5
    return small.reshape(*lead, h * w)

"""Control maps computed from the stage-1 image, in torch, with no annotator weights to download.

- ``canny``: the Canny detector (Gaussian blur σ=1.4, Sobel gradients, non-maximum suppression in 4 directions,
  double threshold, hysteresis), thresholds 100/200 on 0..255 intensities as the ControlNet 1.1 canny model was
  trained with (``cv2.Canny(img, 100, 200)``); cv2 is not a dependency.
- ``softedge``: an HED-free soft edge map: Sobel gradient magnitude averaged over three blur scales (σ = 1, 2, 4),
  each normalised by its 99th percentile, so strong outlines are bright and texture is faint, like HED/PiDiNet's
  output (not their learned semantics).
- ``depth``: a heuristic, not an estimate: 0.6 × a ground-plane ramp (top of the image far, bottom near) + 0.4 ×
  heavily blurred detail energy (detailed regions, usually the subjects, nearer), white = near as MiDaS maps are.
  It keeps the coarse geometry ControlNet-depth expects; operators wanting real depth can swap in a model later.

Every map is an RGB image of the input's size (white structure on black).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

ControlType = Literal["canny", "softedge", "depth"]
CONTROL_TYPES: tuple[ControlType, ...] = ("canny", "softedge", "depth")


def _gray(image: PIL.Image.Image) -> torch.Tensor:
    """``[1, 1, H, W]`` float32 luminance in 0..255."""
    return torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32))[None, None]


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, round(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kx.view(1, 1, 3, 3)), F.conv2d(padded, kx.t().contiguous().view(1, 1, 3, 3))


def canny_edges(image: PIL.Image.Image, low: float = 100.0, high: float = 200.0) -> torch.Tensor:
    """``[H, W]`` bool Canny edges of ``image`` (see the module docstring)."""
    gx, gy = _sobel(_blur(_gray(image), 1.4))
    magnitude = torch.hypot(gx, gy)[0, 0]
    angle = torch.rad2deg(torch.atan2(gy, gx))[0, 0] % 180
    # Neighbour offsets across the edge for the 4 quantised gradient directions: 0°, 45°, 90°, 135°.
    sector = (((angle + 22.5) // 45) % 4).long()
    padded = F.pad(magnitude[None, None], (1, 1, 1, 1))[0, 0]
    h, w = magnitude.shape

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    neighbours = [((0, 1), (0, -1)), ((1, 1), (-1, -1)), ((1, 0), (-1, 0)), ((1, -1), (-1, 1))]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for index, (a, b) in enumerate(neighbours):
        is_max = (magnitude >= shifted(*a)) & (magnitude >= shifted(*b))
        keep |= (sector == index) & is_max
    thin = magnitude * keep
    strong, weak = thin >= high, thin >= low
    # Hysteresis: weak pixels join when 8-connected to a strong one, until nothing changes.
    for _ in range(h * w):
        grown = weak & (F.max_pool2d(strong[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0)
        if torch.equal(grown, strong):
            break
        strong = grown
    return strong


def soft_edges(image: PIL.Image.Image) -> torch.Tensor:
    """``[H, W]`` float soft edge strength in 0..1 (see the module docstring)."""
    gray = _gray(image)
    maps = []
    for sigma in (1.0, 2.0, 4.0):
        gx, gy = _sobel(_blur(gray, sigma))
        magnitude = torch.hypot(gx, gy)[0, 0]
        maps.append(magnitude / torch.quantile(magnitude.flatten(), 0.99).clamp(min=1e-3))
    return torch.stack(maps).mean(0).clamp(0, 1)


def heuristic_depth(image: PIL.Image.Image) -> torch.Tensor:
    """``[H, W]`` float pseudo-depth in 0..1, 1 = near (see the module docstring)."""
    gray = _gray(image)
    h, w = gray.shape[-2:]
    ramp = torch.linspace(0.0, 1.0, h)[:, None].expand(h, w)
    gx, gy = _sobel(_blur(gray, 1.0))
    detail = _blur(torch.hypot(gx, gy), max(2.0, min(h, w) / 16))[0, 0]
    detail = detail / detail.max().clamp(min=1e-3)
    return (0.6 * ramp + 0.4 * detail).clamp(0, 1)


def control_map(image: PIL.Image.Image, control_type: ControlType) -> PIL.Image.Image:
    """The ``control_type`` map of ``image`` as an RGB image of the same size.

    Raises:
        ValueError: an unknown ``control_type``.
    """
    if control_type == "canny":
        values = canny_edges(image).float()
    elif control_type == "softedge":
        values = soft_edges(image)
    elif control_type == "depth":
        values = heuristic_depth(image)
    else:
        raise ValueError(f"control type must be one of {CONTROL_TYPES}, got {control_type!r}")
    array = (values * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return PIL.Image.fromarray(np.stack([array] * 3, axis=-1))

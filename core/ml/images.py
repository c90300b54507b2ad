"""Conversions between PIL images and the tensors the models take: pixels in [-1, 1], masks in [0, 1]."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch


def _resize_center_crop(image: PIL.Image.Image, side: int, resample: PIL.Image.Resampling) -> PIL.Image.Image:
    scale = side / min(image.size)
    width, height = max(side, round(image.width * scale)), max(side, round(image.height * scale))
    resized = image.resize((width, height), resample=resample)
    left, top = (width - side) // 2, (height - side) // 2
    return resized.crop((left, top, left + side, top + side))


def image_to_tensor(image: PIL.Image.Image, side: int) -> torch.Tensor:
    """RGB image → ``[3, side, side]`` float32 in [-1, 1] (short side resized to ``side``, centre crop)."""
    rgb = _resize_center_crop(image.convert("RGB"), side, PIL.Image.Resampling.BICUBIC)
    array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def mask_to_tensor(mask: PIL.Image.Image, side: int, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Mask (white = concept) → ``[1, side, side]`` float32 in [0, 1], cropped like ``image_to_tensor``.

    Args:
        size: ``(width, height)`` of the image the mask belongs to; the mask is first resized to it.
    """
    gray = mask.convert("L")
    if size is not None and gray.size != size:
        gray = gray.resize(size, resample=PIL.Image.Resampling.BILINEAR)
    gray = _resize_center_crop(gray, side, PIL.Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)[None].contiguous()


def tensor_to_images(pixels: torch.Tensor) -> list[PIL.Image.Image]:
    """Decoded VAE output ``[B, 3, H, W]`` in [-1, 1] → B RGB images."""
    array = ((pixels.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return [PIL.Image.fromarray(a.permute(1, 2, 0).numpy()) for a in array]

"""DDIM inversion of a layout reference image, cached: the noisy latents a sampler would pass through to reach it.

Layout alignment compares the sampled latent's self-attention keys with the reference's at the same noise level,
so the reference is inverted once (deterministic DDIM, no guidance, its caption as the prompt) and the latent at
every inversion timestep kept. Concept Conductor inverts with 999 steps; the sampling timesteps only need a nearby
inverted latent, so ``steps`` (default 100 in ``ConductorConfig``) is enough and costs ``steps`` UNet passes at
batch 1 the first time a (image, prompt, size, steps, model) combination is seen.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import PIL.Image
import torch
from diffusers import DDIMInverseScheduler

from core.ml.components import SDComponents
from core.ml.images import image_to_tensor


class InversionCache:
    """At most ``capacity`` inverted references, least recently used dropped first; safe to share between threads."""

    def __init__(self, capacity: int = 8) -> None:
        self._capacity = capacity
        self._items: OrderedDict[str, dict[int, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict[int, torch.Tensor] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, value: dict[int, torch.Tensor]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def _key(components: SDComponents, image: PIL.Image.Image, prompt: str, width: int, height: int, steps: int) -> str:
    digest = hashlib.sha256()
    rgb = image.convert("RGB")
    digest.update(f"{rgb.size}".encode())
    digest.update(rgb.tobytes())
    digest.update(prompt.encode())
    digest.update(f"{width}x{height}:{steps}:{components.base_model_id}:{components.dtype}".encode())
    return digest.hexdigest()


def _fit(image: PIL.Image.Image, width: int, height: int) -> torch.Tensor:
    # The reference is stretched over the output frame, as region masks are: its layout maps onto the image.
    side = max(width, height)
    square = image.convert("RGB").resize((side, side), resample=PIL.Image.Resampling.BICUBIC)
    pixels = image_to_tensor(square, side)[None]  # [1, 3, side, side]
    return torch.nn.functional.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True)


def invert_reference(
    components: SDComponents,
    image: PIL.Image.Image,
    *,
    prompt: str,
    prompt_states: torch.Tensor,
    width: int,
    height: int,
    steps: int,
    cache: InversionCache | None = None,
) -> dict[int, torch.Tensor]:
    """Invert ``image`` with DDIM and return ``{timestep: latent [1, C, h, w]}`` for every inversion timestep.

    Call with no adapters active, under ``torch.no_grad()``, with the UNet's ordinary processors (3-D states) or
    inside ``layerwise_cross_attention`` (4-D states).

    Args:
        prompt: the caption the reference is inverted with (part of the cache key; it must identify the states).
        prompt_states: ``[1, seq, dim]`` or layer-wise ``[1, n_layers, seq, dim]`` encoder states of ``prompt``.
        width, height: the output size; the reference is resized to it.
        steps: inversion steps (timesteps spaced over the whole schedule).
        cache: where inversions are kept between calls.
    """
    key = _key(components, image, prompt, width, height, steps)
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit
    device, dtype = components.device, components.dtype
    pixels = _fit(image, width, height).to(device, dtype)
    latent = components.vae.encode(pixels).latent_dist.mean * components.vae.config.scaling_factor
    scheduler = DDIMInverseScheduler.from_config(components.scheduler.config)
    scheduler.set_timesteps(steps, device=device)
    states = prompt_states.to(device, dtype)
    trajectory: dict[int, torch.Tensor] = {}
    for t in scheduler.timesteps:
        noise = components.unet(latent, t, encoder_hidden_states=states).sample
        latent = scheduler.step(noise, t, latent).prev_sample
        trajectory[int(t)] = latent
    if cache is not None:
        cache.put(key, trajectory)
    return trajectory


def nearest_latent(trajectory: dict[int, torch.Tensor], t: int) -> torch.Tensor:
    """The inverted latent whose timestep is closest to ``t``."""
    return trajectory[min(trajectory, key=lambda s: abs(s - t))]

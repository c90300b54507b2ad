"""The training data: VAE batches drawn from the world, stage-2 captions and pre-encoded latents."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from transformers import CLIPTokenizer

from tessera_shapes import captioning, drawing, sampling, world
from tessera_shapes.tokenizer import MAX_LENGTH
from tessera_shapes.training.config import ShapesTrainingConfig


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, 64, 64, 3)`` to float ``(n, 3, 64, 64)`` in [-1, 1], the range SD's VAE expects."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def vae_batches(config: ShapesTrainingConfig, *, stream: int) -> Iterator[np.ndarray]:
    """Fresh VAE batches forever: a mix of wide-world and base-world scenes, each index drawn once.

    Each ``stream`` draws different scenes, so the decoder stage never repeats the first stage's images.
    """
    index = 0
    rng = np.random.default_rng([config.seed, stream])
    while True:
        batch = np.empty((config.vae_batch_size, world.RESOLUTION, world.RESOLUTION, 3), dtype=np.uint8)
        for i in range(config.vae_batch_size):
            scene_rng = sampling.scene_rng(config.seed + 1000 * stream, index)
            use_base = rng.random() < config.vae_base_fraction
            scene = sampling.sample_base_scene(scene_rng) if use_base else sampling.sample_wide_scene(scene_rng)
            batch[i] = np.asarray(drawing.render_scene(scene))
            index += 1
        yield batch


def caption_ids(tokenizer: CLIPTokenizer, dataset: sampling.BaseDataset, variants: int, *, seed: int) -> torch.Tensor:
    """Token ids of ``variants`` captions per image: the scene's own and ``variants - 1`` more from
    :func:`captioning.describe` (same objects, other wording and order).

    Returns:
        int64 tensor of shape ``(n, variants, MAX_LENGTH)``.
    """
    captions = []
    for i, (caption, specs) in enumerate(zip(dataset.captions, dataset.specs, strict=True)):
        rng = np.random.default_rng([seed, 11, i])
        captions.append(caption)
        captions.extend(captioning.describe(specs, rng) for _ in range(variants - 1))
    ids: torch.Tensor = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    return ids.view(len(dataset.captions), variants, MAX_LENGTH)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, *, batch_size: int = 256) -> torch.Tensor:
    """The posterior mean and std of ``images``, unscaled.

    Returns:
        float32 tensor of shape ``(n, 2, 4, 8, 8)``: ``[:, 0]`` the mean, ``[:, 1]`` the std.
    """
    out = []
    for start in range(0, len(images), batch_size):
        dist = vae.encode(to_tensor(images[start : start + batch_size])).latent_dist
        out.append(torch.stack([dist.mean, dist.std], dim=1))
    return torch.cat(out)

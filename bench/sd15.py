"""SD 1.5-shaped components with random weights: the same layers, sizes and FLOPs as the real model, no download.

Timing does not depend on weight values, so these stand in for ``runwayml/stable-diffusion-v1-5`` in benchmarks on a
machine without the weights. The tokenizer is the tiny preset's (a small BPE vocabulary): prompts tokenize to a few
ids, padded to 77 like the real one, so the text encoder runs its full 77-token sequence.

``side`` below the real 512 keeps the architecture and scales the work by the pixel count (attention by its square
at the highest resolution), which is how CPU runs stay in minutes; a row measured that way says its size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from core.ml.components import PresetOptions, SDComponents
from core.ml.tiny import build_tiny_tokenizer, tiny_scheduler_config

SD15_SAMPLE_SIZE = 64  # latent side of the real model (512 px)
SD15_VOCAB = 49408  # CLIP's vocabulary: the embedding table's size (its memory), the tiny ids index into it


def sd15_unet() -> UNet2DConditionModel:
    """SD 1.5's UNet (860 M parameters): diffusers' defaults are its configuration, with 768-wide text."""
    return UNet2DConditionModel(sample_size=SD15_SAMPLE_SIZE, cross_attention_dim=768, attention_head_dim=8)


def sd15_vae() -> AutoencoderKL:
    """SD 1.5's VAE (84 M parameters)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )


def sd15_text_encoder(vocab_size: int, bos_id: int, eos_id: int) -> CLIPTextModel:
    """CLIP ViT-L/14's text tower (123 M parameters) over ``vocab_size`` tokens."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        projection_dim=768,
        hidden_act="quick_gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return CLIPTextModel(config)


def sd15_components(
    workdir: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> SDComponents:
    """SD 1.5-shaped ``SDComponents`` with random weights (seeded), frozen and in eval mode, on ``device``.

    ``workdir`` holds the tokenizer files. ``default_resolution`` is 512, as for the real model.
    """
    tokenizer = build_tiny_tokenizer(workdir)
    tokenizer.model_max_length = 77
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = (
            sd15_text_encoder(max(SD15_VOCAB, len(tokenizer)), tokenizer.bos_token_id, tokenizer.eos_token_id),
            sd15_vae(),
            sd15_unet(),
        )
    for part in parts:
        part.to(device).eval().requires_grad_(False)
        if dtype != torch.float32:  # built in float32; casting a float32 model to itself only warns
            part.to(dtype)
    text_encoder, vae, unet = parts
    schedule = DDPMScheduler.from_config(tiny_scheduler_config())
    sampler = DPMSolverMultistepScheduler.from_config(schedule.config, algorithm_type="dpmsolver++")
    return SDComponents(
        preset="sd15-random",
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler=sampler,
        device=torch.device(device),
        dtype=dtype,
        options=PresetOptions(),
    )

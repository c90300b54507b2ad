"""The preset's models: the SD-1.5-shaped VAE, text encoder, UNet and noise schedule at the world's size, and
the diffusers folder they are saved as."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tessera_shapes import world
from tessera_shapes.tokenizer import MAX_LENGTH
from tessera_shapes.training.config import ShapesTrainingConfig

NUM_TRAIN_TIMESTEPS = 1000


def build_vae(config: ShapesTrainingConfig) -> AutoencoderKL:
    """The VAE: 64x64x3 images to 8x8x4 latents (downscale 8, as SD 1.5)."""
    n = len(config.vae_channels)
    vae: AutoencoderKL = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=world.RESOLUTION,
    )
    return vae


def build_text_encoder(config: ShapesTrainingConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A small ``CLIPTextModel`` whose embedding table has spare rows for concept tokens."""
    if config.text_vocab_size < len(tokenizer):
        raise ValueError(f"`text_vocab_size` must be at least {len(tokenizer)} but is {config.text_vocab_size}.")
    text_config = CLIPTextConfig(
        vocab_size=config.text_vocab_size,
        hidden_size=config.text_hidden_size,
        intermediate_size=4 * config.text_hidden_size,
        projection_dim=config.text_hidden_size,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(text_config)


def build_unet(config: ShapesTrainingConfig) -> UNet2DConditionModel:
    """The UNet on 8x8x4 latents with cross-attention on every level, the full 8x8 grid included.

    As in SD 1.5, where the 64x64 level attends to the text: layout guidance, attention masks and ED-LoRA all need
    text attention at the grid where an object's shape is decided (without it they act on 4x4 and 2x2 maps).
    """
    n = len(config.unet_channels)
    unet: UNet2DConditionModel = UNet2DConditionModel(
        sample_size=world.RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=config.unet_channels,
        layers_per_block=1,
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return unet


def build_scheduler() -> DDPMScheduler:
    """SD 1.5's training noise schedule (scaled_linear 0.00085-0.012, 1000 steps, epsilon)."""
    scheduler: DDPMScheduler = DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )
    return scheduler


def build_unet_like(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A copy of ``unet`` (same config and weights), so casting it leaves the original untouched."""
    copy: UNet2DConditionModel = UNet2DConditionModel.from_config(unet.config)
    copy.load_state_dict(unet.state_dict())
    return copy.train(False)


def save_preset(
    directory: Path,
    *,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer_dir: Path,
    unet: UNet2DConditionModel,
    unet_dtype: torch.dtype = torch.float16,
    vae_dtype: torch.dtype = torch.float16,
    extra: dict[str, object] | None = None,
) -> None:
    """Writes a diffusers folder laid out like SD 1.5 (plus ``preset.json``) to ``directory``.

    The UNet and VAE are stored in ``unet_dtype`` / ``vae_dtype`` (fp16 by default: it keeps the preset under
    20 MB, diffusers loads them as fp32 unless told otherwise, and VAE reconstructions move by at most one
    intensity level). The text encoder stays fp32, because transformers 5 loads a checkpoint in its stored
    dtype by default and a half-precision text encoder would not match a full-precision UNet.
    """
    staging = directory.with_name(directory.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    vae_copy: AutoencoderKL = AutoencoderKL.from_config(vae.config)
    vae_copy.load_state_dict(vae.state_dict())
    torch.nn.Module.to(vae_copy, dtype=vae_dtype).save_pretrained(staging / "vae", safe_serialization=True)
    text_encoder.save_pretrained(staging / "text_encoder", safe_serialization=True)
    # torch's own ``to``: diffusers' wrapper is untyped and warns about fp32-only modules this UNet lacks.
    unet_copy = torch.nn.Module.to(build_unet_like(unet), dtype=unet_dtype)
    unet_copy.save_pretrained(staging / "unet", safe_serialization=True)
    shutil.copytree(tokenizer_dir, staging / "tokenizer")
    build_scheduler().save_pretrained(staging / "scheduler")
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (staging / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    preset = {
        "name": "shapes",
        "resolution": world.RESOLUTION,
        "recommended_guidance_scale": 4.0,
        "recommended_steps": 20,
        "recommended_lora_weight": 0.7,
        # The separation loss at 1 (EDLoRAConfig's default) turns the green ring into a disc (core/config.py).
        "recommended_separation_loss_weight": 0.1,
        "vocabulary": {
            "colours": list(world.BASE_COLOURS),
            "shapes": list(world.BASE_SHAPES),
            "positions": list(world.POSITIONS),
            "words": list(world.VOCABULARY),
        },
        "held_out_concepts": [
            {"name": c.name, "prompt": c.spec.noun_phrase, **dataclasses.asdict(c.spec)}
            for c in world.HELD_OUT_CONCEPTS
        ],
        "evaluation_concepts": list(world.EVALUATION_CONCEPTS),
        # Concept Conductor's k-means over the 64 tokens of the 8x8 grid gives fragmented masks: pair binding on the
        # evaluation concepts was 1/16 with refinement and 9/16 without (two training seeds, 8 images each).
        "conductor_refine_masks": False,
        # Injection in the up blocks only let the base path's class words win (rings drawn as filled circles, the
        # purple triangle blue): binding 4/8 -> 7/8 on one training seed with every attention layer (6/8 on another).
        "conductor_merge_layers": "all",
        "held_out_pairs": sorted(
            f"{a.noun_phrase} on the left and {b.noun_phrase} on the right" for a, b in world.HELD_OUT_PAIRS
        ),
        **(extra or {}),
    }
    (staging / "preset.json").write_text(json.dumps(preset, indent=2) + "\n")
    if directory.exists():
        # Replace only the files this function writes; a README beside them is kept.
        for name in ("vae", "text_encoder", "unet", "tokenizer", "scheduler", "model_index.json", "preset.json"):
            path = directory / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        for item in staging.iterdir():
            item.rename(directory / item.name)
        staging.rmdir()
    else:
        staging.rename(directory)

"""Training of the shapes preset, one module per stage.

- ``config``: :class:`ShapesTrainingConfig`, the preset folder (``PRESET_DIR``) and the progress callback type;
- ``preset``: building the VAE, text encoder, UNet and noise schedule, and saving them as a diffusers folder;
- ``data``: VAE batches drawn from the world, stage-2 captions, pre-encoded latents;
- ``optimizer``: the learning-rate schedule, clipped optimizer step and smoothed loss every stage shares;
- ``vae``: stages 1, 1b, 1c and 1d, their reconstruction loss, and refining a shipped preset's VAE in place;
- ``denoiser``: stage 2, the UNet and text encoder with an EMA of their weights;
- ``pipeline``: :func:`train_shapes`, which runs the stages in order, and the command line (``main``).

``python -m tessera_shapes.training --help`` (or ``tessera shapes train --help``) lists the options.
"""

from tessera_shapes.training.config import PRESET_DIR, ShapesTrainingConfig, StepCallback
from tessera_shapes.training.data import caption_ids, encode_latents
from tessera_shapes.training.denoiser import train_denoiser, warm_start
from tessera_shapes.training.pipeline import TrainingReport, main, train_shapes
from tessera_shapes.training.preset import (
    NUM_TRAIN_TIMESTEPS,
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
    save_preset,
)
from tessera_shapes.training.vae import (
    harden_preset_vae,
    harden_vae_decoder,
    latent_drift,
    psnr_db,
    reconstruct,
    refine_preset_vae,
    refine_vae_anchored,
    refine_vae_decoder,
    train_vae,
)

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "PRESET_DIR",
    "ShapesTrainingConfig",
    "StepCallback",
    "TrainingReport",
    "build_scheduler",
    "build_text_encoder",
    "build_unet",
    "build_vae",
    "caption_ids",
    "encode_latents",
    "harden_preset_vae",
    "harden_vae_decoder",
    "latent_drift",
    "main",
    "psnr_db",
    "reconstruct",
    "refine_preset_vae",
    "refine_vae_anchored",
    "refine_vae_decoder",
    "save_preset",
    "train_denoiser",
    "train_shapes",
    "train_vae",
    "warm_start",
]

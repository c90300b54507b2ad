"""Trains the ``shapes`` preset from scratch on a CPU: VAE, then text encoder and UNet together.

Stage 1 trains an ``AutoencoderKL`` (64x64x3 <-> 8x8x4) on the *wide* world (random hues, extra shapes,
stripes), so it can represent the held-out concepts as well; stage 1b refines its decoder alone, and stage 1c
the whole VAE on stripe-rich batches while an anchor keeps base-world latents where they were. Stage 2
pre-encodes base-world latents once and trains a ``CLIPTextModel`` and a ``UNet2DConditionModel`` jointly with
SD 1.5's noise schedule, epsilon prediction, Min-SNR-5 weighting, caption dropout and an EMA of the weights.
The result is written as a diffusers folder that ``StableDiffusionPipeline`` loads like SD 1.5.

Run ``python -m tessera_shapes.training --help``; partial runs leave usable checkpoints in ``--work-dir``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core.ml.components import SHIPPED_PRESETS_ROOT
from tessera_shapes import world
from tessera_shapes.tokenizer import MAX_LENGTH, write_tokenizer

logger = logging.getLogger(__name__)

StepCallback = Callable[[str, int, int, float], None]
"""Called as ``on_step(stage, step, total_steps, loss)`` after every optimizer step."""

NUM_TRAIN_TIMESTEPS = 1000
# The preset ships with the service, which loads it from there; training writes it in place.
PRESET_DIR = SHIPPED_PRESETS_ROOT / "shapes"


@dataclass(frozen=True)
class ShapesTrainingConfig:
    """Hyperparameters of the shapes preset: the defaults are the recipe the project recommends from scratch; the
    shipped weights came from a chain of runs that the preset README lists command by command."""

    seed: int = field(default=0, metadata={"help": "seeds data, initialisation, noise and dropout"})
    threads: int = field(default=2, metadata={"help": "torch intra-op threads"})
    # Stage 1: VAE.
    vae_steps: int = field(default=500, metadata={"help": "VAE optimizer steps"})
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_base_fraction: float = field(default=0.3, metadata={"help": "share of base-world images in VAE batches"})
    vae_foreground_weight: float = field(default=4.0, metadata={"help": "extra loss weight on object pixels"})
    decoder_steps: int = field(default=800, metadata={"help": "decoder-only VAE steps, encoder frozen (0: skip)"})
    decoder_lr: float = 5e-4
    anchor_steps: int = field(
        default=800, metadata={"help": "whole-VAE steps on stripe-rich batches, base latents anchored (0: skip)"}
    )
    anchor_lr: float = 1e-3
    anchor_weight: float = 10.0
    anchor_striped_share: float = 0.6
    harden_steps: int = field(
        default=600, metadata={"help": "decoder-only steps on noised latents, encoder frozen (0: skip)"}
    )
    harden_lr: float = 3e-4
    harden_noise: float = field(
        default=0.25, metadata={"help": "largest latent noise in stage 1d, relative to the latents' std"}
    )
    # Stage 2: text encoder + UNet.
    num_images: int = field(default=30000, metadata={"help": "base-world images encoded once for stage 2"})
    caption_variants: int = field(default=4, metadata={"help": "differently worded captions per stage-2 image"})
    unet_steps: int = field(default=3000, metadata={"help": "UNet + text encoder optimizer steps"})
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 1e-2
    # Off (plain epsilon MSE, as SD 1.5): Min-SNR-5 all but ignores the low-noise steps that set an outline, and
    # the model drew pinched squares and rounded-diamond circles; 1000 steps without it lifted strict-scorer shape
    # accuracy of pairs from 0.37 to 0.59.
    min_snr_gamma: float = 0.0
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    checkpoint_every: int = field(default=400, metadata={"help": "write a usable preset every N UNet steps"})
    # Model sizes.
    text_vocab_size: int = field(default=256, metadata={"help": "embedding rows; those past the tokenizer are spare"})
    text_hidden_size: int = 128
    text_layers: int = 3
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)

    def __post_init__(self) -> None:
        for name in (
            "vae_steps",
            "unet_steps",
            "batch_size",
            "vae_batch_size",
            "num_images",
            "checkpoint_every",
            "caption_variants",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1 but is {getattr(self, name)}.")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"`caption_dropout` must be in [0, 1) but is {self.caption_dropout}.")
        if not 0.0 <= self.anchor_striped_share <= 1.0:
            raise ValueError(f"`anchor_striped_share` must be in [0, 1] but is {self.anchor_striped_share}.")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in (0, 1) but is {self.ema_decay}.")


@dataclass
class TrainingReport:
    """What a run did: seconds per stage, steps, losses and the VAE latent scaling factor."""

    config: dict[str, object]
    seconds: dict[str, float] = field(default_factory=dict)
    vae_loss: float = float("nan")
    decoder_loss: float = float("nan")
    anchor_loss: float = float("nan")
    harden_loss: float = float("nan")
    vae_psnr_db: float = float("nan")
    scaling_factor: float = float("nan")
    unet_steps_done: int = 0
    unet_loss: float = float("nan")


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


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, 64, 64, 3)`` to float ``(n, 3, 64, 64)`` in [-1, 1], the range SD's VAE expects."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _optimizer_step(
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    params: Iterable[torch.nn.Parameter],
    loss: torch.Tensor,
) -> None:
    """One step of every stage here: backward, clip the gradient norm at 1, step the optimizer and its schedule."""
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()


def _smoothed(previous: float, value: float, decay: float = 0.98) -> float:
    return value if math.isnan(previous) else decay * previous + (1.0 - decay) * value


def _vae_batches(config: ShapesTrainingConfig, *, stream: int) -> Iterator[np.ndarray]:
    """Fresh VAE batches forever: a mix of wide-world and base-world scenes, each index drawn once.

    Each ``stream`` draws different scenes, so the decoder stage never repeats the first stage's images.
    """
    index = 0
    rng = np.random.default_rng([config.seed, stream])
    while True:
        batch = np.empty((config.vae_batch_size, world.RESOLUTION, world.RESOLUTION, 3), dtype=np.uint8)
        for i in range(config.vae_batch_size):
            scene_rng = world.scene_rng(config.seed + 1000 * stream, index)
            use_base = rng.random() < config.vae_base_fraction
            scene = world.sample_base_scene(scene_rng) if use_base else world.sample_wide_scene(scene_rng)
            batch[i] = np.asarray(world.render_scene(scene))
            index += 1
        yield batch


def train_vae(config: ShapesTrainingConfig, *, on_step: StepCallback | None = None) -> tuple[AutoencoderKL, float]:
    """Trains the VAE with MSE + 0.5 L1 (object pixels weighted up) + a tiny KL term.

    Returns:
        the trained VAE (eval mode) and its final smoothed loss.
    """
    torch.manual_seed(config.seed)
    vae = build_vae(config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, config.vae_steps, min(100, config.vae_steps // 10 + 1))
    )
    batches = _vae_batches(config, stream=1)
    smoothed = float("nan")
    vae.train()
    for step in range(config.vae_steps):
        posterior, loss = _vae_loss(vae, _to_tensor(next(batches)), config)
        loss = loss + config.vae_kl_weight * posterior.kl().mean()
        _optimizer_step(optimizer, scheduler, vae.parameters(), loss)
        smoothed = _smoothed(smoothed, loss.item())
        if on_step is not None:
            on_step("vae", step + 1, config.vae_steps, smoothed)
    vae.train(False)
    return vae, smoothed


def _vae_loss(
    vae: AutoencoderKL, x: torch.Tensor, config: ShapesTrainingConfig
) -> tuple[DiagonalGaussianDistribution, torch.Tensor]:
    """The posterior of ``x`` (``(b, 3, 64, 64)`` in [-1, 1]) and the weighted MSE + 0.5 L1 reconstruction loss."""
    posterior = vae.encode(x).latent_dist
    return posterior, _reconstruction_loss(vae.decode(posterior.sample()).sample, x, config)


def _reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, config: ShapesTrainingConfig) -> torch.Tensor:
    """Weighted MSE + 0.5 L1 of ``recon`` against ``x`` (both ``(b, 3, 64, 64)`` in [-1, 1])."""
    # Objects cover a small share of the image; weighting their pixels up keeps held-out hues saturated.
    background = x[:, :, :1, :1]
    foreground = ((x - background).abs().amax(dim=1, keepdim=True) > 0.1).float()
    weight = 1.0 + config.vae_foreground_weight * foreground
    error = recon - x
    return (weight * (error.pow(2) + 0.5 * error.abs())).mean()


def _decoder_parameters(vae: AutoencoderKL) -> list[torch.nn.Parameter]:
    """Freezes ``vae`` but for its decoder side (``decoder``, ``post_quant_conv``) and returns those parameters."""
    trainable = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    vae.requires_grad_(False)
    for param in trainable:
        param.requires_grad_(True)
    return trainable


def refine_vae_decoder(
    vae: AutoencoderKL, config: ShapesTrainingConfig, *, on_step: StepCallback | None = None
) -> tuple[AutoencoderKL, float]:
    """Trains only the decoder side (``decoder``, ``post_quant_conv``) further, on fresh wide-world batches.

    The encoder is frozen, so latents (and a UNet trained on them) stay valid: this stage may run before,
    after or alongside the UNet stage with the same result. It sharpens what a short VAE run blurs most:
    stripes, small rings and held-out hues.

    Returns:
        ``vae`` (trained in place, eval mode) and the final smoothed loss.
    """
    torch.manual_seed(config.seed + 2)
    trainable = _decoder_parameters(vae)
    optimizer = torch.optim.AdamW(trainable, lr=config.decoder_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, config.decoder_steps, min(50, config.decoder_steps // 10 + 1))
    )
    batches = _vae_batches(config, stream=5)
    smoothed = float("nan")
    vae.decoder.train()
    for step in range(config.decoder_steps):
        _, loss = _vae_loss(vae, _to_tensor(next(batches)), config)
        _optimizer_step(optimizer, scheduler, trainable, loss)
        smoothed = _smoothed(smoothed, loss.item())
        if on_step is not None:
            on_step("vae_decoder", step + 1, config.decoder_steps, smoothed)
    vae.requires_grad_(True)
    vae.train(False)
    return vae, smoothed


def refine_vae_anchored(
    vae: AutoencoderKL, config: ShapesTrainingConfig, *, on_step: StepCallback | None = None
) -> tuple[AutoencoderKL, float]:
    """Trains the whole VAE further on stripe-rich wide-world batches, keeping base-world latents in place.

    Each step reconstructs 24 wide-world scenes (objects striped with ``anchor_striped_share``) and 8 base-world
    scenes, and adds ``anchor_weight`` times the mean squared distance between the encoder's latent means of 16
    base-world scenes and those of the VAE as it came in (in units of the incoming latents' std). The encoder
    thus learns codes for what stages 1/1b blur (stripes) without moving the latents a UNet was trained on, so
    this stage can refine the VAE of a shipped preset without retraining its UNet.

    Returns:
        ``vae`` (trained in place, eval mode) and the final smoothed reconstruction loss.
    """
    torch.manual_seed(config.seed + 3)
    reference = copy.deepcopy(vae).requires_grad_(False).train(False)
    rng_seed = config.seed + 1000 * 7
    with torch.no_grad():
        probe = np.stack(
            [
                np.asarray(world.render_scene(world.sample_base_scene(world.scene_rng(rng_seed + 3, i))))
                for i in range(64)
            ]
        )
        scale = float(1.0 / reference.encode(_to_tensor(probe)).latent_dist.mean.std())
    vae.requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.anchor_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, config.anchor_steps, min(30, config.anchor_steps // 10 + 1))
    )
    smoothed = float("nan")
    index = 0
    vae.train()
    for step in range(config.anchor_steps):
        wide = [
            world.sample_wide_scene(
                world.scene_rng(rng_seed + 1, index + i), striped_share=config.anchor_striped_share
            )
            for i in range(24)
        ]
        base = [world.sample_base_scene(world.scene_rng(rng_seed + 2, index + i)) for i in range(16)]
        index += 24
        x_wide = _to_tensor(np.stack([np.asarray(world.render_scene(scene)) for scene in wide]))
        x_base = _to_tensor(np.stack([np.asarray(world.render_scene(scene)) for scene in base]))
        posterior, loss = _vae_loss(vae, torch.cat([x_wide, x_base[:8]]), config)
        with torch.no_grad():
            target = reference.encode(x_base).latent_dist.mean
        drift = ((vae.encode(x_base).latent_dist.mean - target) * scale).pow(2).mean()
        total = loss + config.anchor_weight * drift + config.vae_kl_weight * posterior.kl().mean()
        _optimizer_step(optimizer, scheduler, vae.parameters(), total)
        smoothed = _smoothed(smoothed, loss.item())
        if on_step is not None:
            on_step("vae_anchored", step + 1, config.anchor_steps, smoothed)
    vae.train(False)
    return vae, smoothed


def latent_drift(before: AutoencoderKL, after: AutoencoderKL, images: np.ndarray) -> float:
    """RMS distance between two VAEs' latent means of ``images`` (uint8 ``(n, 64, 64, 3)``), in units of the
    ``before`` latents' std: how far a stage moved the latents a UNet was trained on."""
    with torch.no_grad():
        x = _to_tensor(images)
        old = before.encode(x).latent_dist.mean
        new = after.encode(x).latent_dist.mean
    return float(((new - old) / old.std()).pow(2).mean().sqrt())


def harden_vae_decoder(
    vae: AutoencoderKL, config: ShapesTrainingConfig, *, on_step: StepCallback | None = None
) -> tuple[AutoencoderKL, float]:
    """Stage 1d: trains the decoder to draw the clean image from a *noised* latent of it; the encoder is frozen.

    Why: a denoiser's sample is never exactly a latent the encoder would give, and this decoder is brittle to the
    difference (drawn single objects through the VAE, scorer-correct: 72/72 from the exact latent mean, 59/72
    with Gaussian noise of 0.1 latent std, 24/72 at 0.2); its failures are the pinched squares and rounded-diamond
    circles the base model was seen to draw. Each step decodes ``mean + u * harden_noise * std * noise`` with
    ``u ~ U(0, 1)`` per image and regresses the clean pixels (same weighted loss as stage 1). The encoder, its
    latents and a UNet trained on them stay valid, so this can run on a shipped preset.

    Returns:
        ``vae`` (trained in place, eval mode) and the final smoothed loss.
    """
    torch.manual_seed(config.seed + 4)
    generator = torch.Generator().manual_seed(config.seed + 4)
    trainable = _decoder_parameters(vae)
    optimizer = torch.optim.AdamW(trainable, lr=config.harden_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, config.harden_steps, min(30, config.harden_steps // 10 + 1))
    )
    with torch.no_grad():
        probe = world.draw_base_dataset(64, config.seed + 11).images
        latent_std = float(vae.encode(_to_tensor(probe)).latent_dist.mean.std())
    batches = _vae_batches(config, stream=9)
    smoothed = float("nan")
    vae.decoder.train()
    for step in range(config.harden_steps):
        x = _to_tensor(next(batches))
        with torch.no_grad():
            mean = vae.encode(x).latent_dist.mean
        level = torch.rand((len(x), 1, 1, 1), generator=generator) * config.harden_noise * latent_std
        noised = mean + level * torch.randn(mean.shape, generator=generator)
        loss = _reconstruction_loss(vae.decode(noised).sample, x, config)
        _optimizer_step(optimizer, scheduler, trainable, loss)
        smoothed = _smoothed(smoothed, loss.item())
        if on_step is not None:
            on_step("vae_harden", step + 1, config.harden_steps, smoothed)
    vae.requires_grad_(True)
    vae.train(False)
    return vae, smoothed


def harden_preset_vae(preset_dir: Path, config: ShapesTrainingConfig, *, on_step: StepCallback | None = None) -> None:
    """Runs stage 1d on the VAE of the preset in ``preset_dir`` and stores it back (fp16, same scaling factor)."""
    vae = AutoencoderKL.from_pretrained(preset_dir / "vae", torch_dtype=torch.float32).train(False)
    vae, _ = harden_vae_decoder(vae, config, on_step=on_step)
    vae.register_to_config(_name_or_path=f"{preset_dir.name}/vae")
    torch.nn.Module.to(vae, dtype=torch.float16).save_pretrained(preset_dir / "vae", safe_serialization=True)


def refine_preset_vae(preset_dir: Path, config: ShapesTrainingConfig, *, on_step: StepCallback | None = None) -> float:
    """Runs stage 1c on the VAE of the preset in ``preset_dir`` and stores it back (fp16, same scaling factor).

    Returns:
        the latent drift of held-out base-world images (see :func:`latent_drift`).
    """
    vae = AutoencoderKL.from_pretrained(preset_dir / "vae", torch_dtype=torch.float32).train(False)
    before = copy.deepcopy(vae)
    vae, _ = refine_vae_anchored(vae, config, on_step=on_step)
    drift = latent_drift(before, vae, world.draw_base_dataset(256, config.seed + 7)[0])
    # from_pretrained recorded this machine's absolute path; the shipped config should not carry it.
    vae.register_to_config(_name_or_path=f"{preset_dir.name}/vae")
    torch.nn.Module.to(vae, dtype=torch.float16).save_pretrained(preset_dir / "vae", safe_serialization=True)
    return drift


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Encodes and decodes ``images`` (uint8 ``(n, 64, 64, 3)``) through the latent mean; same shape back."""
    out = []
    for start in range(0, len(images), batch_size):
        x = _to_tensor(images[start : start + batch_size])
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        out.append(((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 image stacks, in dB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * math.log10(255.0**2 / max(mse, 1e-12))


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, *, batch_size: int = 256) -> torch.Tensor:
    """The posterior mean and std of ``images``, unscaled.

    Returns:
        float32 tensor of shape ``(n, 2, 4, 8, 8)``: ``[:, 0]`` the mean, ``[:, 1]`` the std.
    """
    out = []
    for start in range(0, len(images), batch_size):
        dist = vae.encode(_to_tensor(images[start : start + batch_size])).latent_dist
        out.append(torch.stack([dist.mean, dist.std], dim=1))
    return torch.cat(out)


class _EMA:
    """An exponential moving average of a module's parameters (the weights the preset ships)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        # Warm-up form of the decay, so early EMA weights are not dominated by the random initialisation.
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, params: Sequence[torch.nn.Parameter]) -> None:
        for target, value in zip(params, self.shadow, strict=True):
            target.copy_(value)


def _min_snr_weight(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction: ``min(snr, gamma) / snr``, shape ``(batch,)``; all ones
    when ``gamma <= 0`` (plain epsilon MSE, as SD 1.5 was trained)."""
    if gamma <= 0:
        return torch.ones(timesteps.shape)
    alphas_cumprod = scheduler.alphas_cumprod[timesteps]
    snr: torch.Tensor = alphas_cumprod / (1.0 - alphas_cumprod)
    return torch.clamp(snr, max=gamma) / snr


def warm_start(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, preset_dir: Path) -> list[str]:
    """Loads a trained preset's UNet and text encoder weights into freshly built models, in place.

    Modules the old UNet lacks (e.g. the attention blocks of a level that had none) keep their initialisation,
    except that each such transformer's output projection starts at zero: the warm-started UNet then computes
    exactly what the old one did, and the new attention grows in from there instead of adding noise.

    Returns:
        the names of the UNet parameters that were not in the old weights.
    """
    old_unet = UNet2DConditionModel.from_pretrained(preset_dir / "unet", torch_dtype=torch.float32)
    result = unet.load_state_dict(old_unet.state_dict(), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{preset_dir}: UNet weights this architecture has no place for: {result.unexpected_keys}")
    new_blocks = {key.split(".transformer_blocks")[0] for key in result.missing_keys if ".attentions." in key}
    for name, module in unet.named_modules():
        if name in new_blocks and hasattr(module, "proj_out"):
            torch.nn.init.zeros_(module.proj_out.weight)
            torch.nn.init.zeros_(module.proj_out.bias)
    old_text = CLIPTextModel.from_pretrained(preset_dir / "text_encoder", dtype=torch.float32)
    text_encoder.load_state_dict(old_text.state_dict())
    return list(result.missing_keys)


def train_denoiser(
    config: ShapesTrainingConfig,
    latents: torch.Tensor,
    input_ids: torch.Tensor,
    tokenizer: CLIPTokenizer,
    *,
    on_step: StepCallback | None = None,
    on_checkpoint: Callable[[UNet2DConditionModel, CLIPTextModel, int], None] | None = None,
    init_from: Path | None = None,
) -> tuple[UNet2DConditionModel, CLIPTextModel, float]:
    """Trains the UNet and text encoder jointly on pre-encoded, already *scaled* latents.

    Args:
        latents: ``(n, 2, 4, 8, 8)`` posterior mean and std, both multiplied by the VAE scaling factor.
        input_ids: ``(n, k, MAX_LENGTH)`` token ids of ``k`` differently worded captions per image; each step
            picks one at random per sample.
        tokenizer: the world tokenizer (its empty-caption ids replace dropped captions).
        on_checkpoint: called every ``checkpoint_every`` steps with EMA copies of both models.
        init_from: a preset folder whose UNet and text encoder weights start the run (see :func:`warm_start`).

    Returns:
        the EMA UNet, the EMA text encoder (both eval mode) and the final smoothed loss.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    unet = build_unet(config)
    text_encoder = build_text_encoder(config, tokenizer)
    if init_from is not None:
        warm_start(unet, text_encoder, init_from)
    noise_scheduler = build_scheduler()
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _cosine_lr(s, config.unet_steps, config.warmup_steps)
    )
    ema = _EMA(params, config.ema_decay)
    empty_ids = tokenizer("", padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    smoothed = float("nan")
    unet.train()
    text_encoder.train()

    def ema_copies() -> tuple[UNet2DConditionModel, CLIPTextModel]:
        ema_unet, ema_text = build_unet(config), build_text_encoder(config, tokenizer)
        ema.copy_to([*ema_unet.parameters(), *ema_text.parameters()])
        return ema_unet.train(False), ema_text.train(False)

    for step in range(config.unet_steps):
        index = torch.randint(len(latents), (config.batch_size,), generator=generator)
        mean, std = latents[index, 0], latents[index, 1]
        x0 = mean + std * torch.randn(mean.shape, generator=generator)
        variant = torch.randint(input_ids.shape[1], (config.batch_size,), generator=generator)
        ids = input_ids[index, variant].clone()
        dropped = torch.rand(config.batch_size, generator=generator) < config.caption_dropout
        ids[dropped] = empty_ids
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (config.batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(x0, noise, cast(torch.IntTensor, timesteps))
        hidden = text_encoder(ids).last_hidden_state
        prediction = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        per_sample = F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * _min_snr_weight(noise_scheduler, timesteps, config.min_snr_gamma)).mean()
        _optimizer_step(optimizer, lr_schedule, params, loss)
        ema.update(step)
        smoothed = _smoothed(smoothed, per_sample.mean().item(), decay=0.99)
        if on_step is not None:
            on_step("unet", step + 1, config.unet_steps, smoothed)
        if on_checkpoint is not None and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.unet_steps:
            on_checkpoint(*ema_copies(), step + 1)
    ema_unet, ema_text = ema_copies()
    return ema_unet, ema_text, smoothed


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


def build_unet_like(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A copy of ``unet`` (same config and weights), so casting it leaves the original untouched."""
    copy: UNet2DConditionModel = UNet2DConditionModel.from_config(unet.config)
    copy.load_state_dict(unet.state_dict())
    return copy.train(False)


def _log_step(every: int) -> StepCallback:
    started: dict[str, float] = {}

    def log(stage: str, step: int, total: int, loss: float) -> None:
        start = started.setdefault(stage, time.monotonic())
        if step % every == 0 or step == total:
            elapsed = time.monotonic() - start
            logger.info(
                "%s step %d/%d loss %.4f (%.0f s, %.2f it/s)",
                stage,
                step,
                total,
                loss,
                elapsed,
                (step - 1) / max(elapsed, 1e-9),
            )

    return log


def train_shapes(
    output_dir: Path = PRESET_DIR,
    *,
    config: ShapesTrainingConfig | None = None,
    work_dir: Path = Path(".cache/shapes"),
    reuse_vae: bool = True,
    on_step: StepCallback | None = None,
    vae_from: Path | None = None,
    init_from: Path | None = None,
) -> TrainingReport:
    """Trains the shapes preset from scratch and writes it to ``output_dir``.

    Args:
        output_dir: the preset folder to write (``core/ml/presets/shapes`` by default).
        config: hyperparameters; the defaults reproduce the shipped weights.
        work_dir: scratch space for the tokenizer, the stage-1 VAE, latents, checkpoints and ``report.json``.
        reuse_vae: skip stage 1 when ``work_dir/vae`` already holds a VAE (resume after an interrupted run).
        vae_from: a trained VAE folder (e.g. ``<preset>/vae``); stages 1, 1b and 1c are then skipped.
        init_from: a preset folder whose UNet and text encoder start stage 2 (:func:`warm_start`).
        on_step: progress callback; defaults to logging every 50 steps.

    Returns:
        the run's :class:`TrainingReport` (also written to ``work_dir/report.json``).
    """
    config = config or ShapesTrainingConfig()
    # The thread count is process-wide: set it for the run and give the caller's back afterwards.
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train_shapes(output_dir, config, work_dir, reuse_vae, on_step or _log_step(50), vae_from, init_from)
    finally:
        torch.set_num_threads(previous_threads)


def caption_ids(tokenizer: CLIPTokenizer, dataset: world.BaseDataset, variants: int, *, seed: int) -> torch.Tensor:
    """Token ids of ``variants`` captions per image: the scene's own and ``variants - 1`` more from
    :func:`world.describe` (same objects, other wording and order).

    Returns:
        int64 tensor of shape ``(n, variants, MAX_LENGTH)``.
    """
    captions = []
    for i, (caption, specs) in enumerate(zip(dataset.captions, dataset.specs, strict=True)):
        rng = np.random.default_rng([seed, 11, i])
        captions.append(caption)
        captions.extend(world.describe(specs, rng) for _ in range(variants - 1))
    ids: torch.Tensor = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
    return ids.view(len(dataset.captions), variants, MAX_LENGTH)


def _train_shapes(
    output_dir: Path,
    config: ShapesTrainingConfig,
    work_dir: Path,
    reuse_vae: bool,
    on_step: StepCallback,
    vae_from: Path | None,
    init_from: Path | None = None,
) -> TrainingReport:
    work_dir.mkdir(parents=True, exist_ok=True)
    report = TrainingReport(config=dataclasses.asdict(config))
    tokenizer = write_tokenizer(world.VOCABULARY, work_dir / "tokenizer")

    vae_dir = work_dir / "vae"

    def stage(
        name: str,
        steps: int,
        folder: Path,
        current: AutoencoderKL | None,
        run: Callable[[AutoencoderKL | None], tuple[AutoencoderKL, float]],
    ) -> tuple[AutoencoderKL | None, float]:
        """One VAE stage, or its saved result when resuming; the loss is NaN when reused or skipped."""
        started = time.monotonic()
        result, loss = current, float("nan")
        if steps > 0 and reuse_vae and (folder / "config.json").exists():
            logger.info("reusing the %s stage's VAE in %s", name, folder)
            result = AutoencoderKL.from_pretrained(folder).train(False)
        elif steps > 0:
            result, loss = run(current)
            result.save_pretrained(folder, safe_serialization=True)
        report.seconds[name] = time.monotonic() - started
        return result, loss

    def _then(
        refine: Callable[..., tuple[AutoencoderKL, float]],
    ) -> Callable[[AutoencoderKL | None], tuple[AutoencoderKL, float]]:
        def run(previous: AutoencoderKL | None) -> tuple[AutoencoderKL, float]:
            assert previous is not None  # stage 1 ran or was reused before any refinement
            return refine(previous, config, on_step=on_step)

        return run

    if vae_from is not None:
        # Stage 2 alone on a trained VAE (e.g. the shipped preset's): its latents are the ones the UNet learns.
        logger.info("using the VAE in %s; stages 1, 1b and 1c skipped", vae_from)
        vae = AutoencoderKL.from_pretrained(vae_from, torch_dtype=torch.float32).train(False)
    else:
        # Stages 1, 1b, 1c and 1d in order, each on the previous one's VAE (stage 1 starts from nothing).
        stages: list[tuple[str, int, Path, Callable[[AutoencoderKL | None], tuple[AutoencoderKL, float]], str]] = [
            ("vae", config.vae_steps, vae_dir, lambda _: train_vae(config, on_step=on_step), "vae_loss"),
            ("vae_decoder", config.decoder_steps, work_dir / "vae_decoder", _then(refine_vae_decoder), "decoder_loss"),
            (
                "vae_anchored",
                config.anchor_steps,
                work_dir / "vae_anchored",
                _then(refine_vae_anchored),
                "anchor_loss",
            ),
            ("vae_hardened", config.harden_steps, work_dir / "vae_hardened", _then(harden_vae_decoder), "harden_loss"),
        ]
        current: AutoencoderKL | None = None
        for name, steps, folder, run, loss_field in stages:
            current, loss = stage(name, steps, folder, current, run)
            setattr(report, loss_field, loss)
        assert current is not None  # vae_steps >= 1
        vae = current

    started = time.monotonic()
    dataset = world.draw_base_dataset(config.num_images, config.seed)
    images = dataset.images
    report.seconds["draw_dataset"] = time.monotonic() - started
    started = time.monotonic()
    held = world.draw_base_dataset(min(256, config.num_images), config.seed + 7)[0]
    report.vae_psnr_db = psnr_db(held, reconstruct(vae, held))
    latents = encode_latents(vae, images)
    report.scaling_factor = float(1.0 / latents[:, 0].std())
    vae.register_to_config(scaling_factor=report.scaling_factor)
    if vae_from is None:
        vae.save_pretrained(vae_dir, safe_serialization=True)
    latents = latents * report.scaling_factor
    input_ids = caption_ids(tokenizer, dataset, config.caption_variants, seed=config.seed)
    report.seconds["encode_latents"] = time.monotonic() - started
    logger.info(
        "VAE PSNR %.2f dB on held-out base images; scaling factor %.4f", report.vae_psnr_db, report.scaling_factor
    )

    def checkpoint(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, step: int) -> None:
        save_preset(
            work_dir / "checkpoint",
            vae=vae,
            text_encoder=text_encoder,
            tokenizer_dir=work_dir / "tokenizer",
            unet=unet,
            extra={"training_steps": step},
        )
        logger.info("checkpoint at step %d written to %s", step, work_dir / "checkpoint")

    started = time.monotonic()
    unet, text_encoder, report.unet_loss = train_denoiser(
        config, latents, input_ids, tokenizer, on_step=on_step, on_checkpoint=checkpoint, init_from=init_from
    )
    report.seconds["unet"] = time.monotonic() - started
    report.unet_steps_done = config.unet_steps
    save_preset(
        output_dir,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer_dir=work_dir / "tokenizer",
        unet=unet,
        extra={"training_steps": config.unet_steps, "vae_decoder_steps": config.decoder_steps, "seed": config.seed},
    )
    (work_dir / "report.json").write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    return report


_CLI_FIELDS = (
    "seed",
    "threads",
    "vae_steps",
    "decoder_steps",
    "anchor_steps",
    "unet_steps",
    "num_images",
    "caption_variants",
    "batch_size",
    "checkpoint_every",
    "warmup_steps",
    "harden_steps",
)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tessera_shapes.training``: trains the preset and logs progress to stderr."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=PRESET_DIR)
    parser.add_argument("--work-dir", type=Path, default=Path(".cache/shapes"))
    parser.add_argument("--fresh-vae", action="store_true", help="retrain the VAE even if work-dir has one")
    parser.add_argument("--vae-from", type=Path, help="a trained VAE folder; train only stage 2 on its latents")
    parser.add_argument("--init-from", type=Path, help="a preset folder whose UNet and text encoder start stage 2")
    parser.add_argument(
        "--harden-preset-vae",
        action="store_true",
        help="run only stage 1d on the VAE in --output-dir and store it back (the UNet stays valid)",
    )
    parser.add_argument(
        "--refine-preset-vae",
        action="store_true",
        help="run only stage 1c on the VAE in --output-dir and store it back (the UNet stays valid)",
    )
    defaults = ShapesTrainingConfig()
    for name in _CLI_FIELDS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr, help="stage-2 peak learning rate")
    parser.add_argument(
        "--min-snr-gamma", type=float, default=defaults.min_snr_gamma, help="stage-2 Min-SNR weighting (0: off)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = dataclasses.replace(
        defaults,
        **{n: getattr(args, n) for n in _CLI_FIELDS},
        lr=args.lr,
        min_snr_gamma=args.min_snr_gamma,
    )
    if args.harden_preset_vae:
        torch.set_num_threads(config.threads)
        harden_preset_vae(args.output_dir, config, on_step=_log_step(50))
        logger.info("stage 1d done")
        return
    if args.refine_preset_vae:
        torch.set_num_threads(config.threads)
        drift = refine_preset_vae(args.output_dir, config, on_step=_log_step(50))
        logger.info("stage 1c done; base-world latents moved by %.4f std (RMS)", drift)
        return
    report = train_shapes(
        args.output_dir,
        config=config,
        work_dir=args.work_dir,
        reuse_vae=not args.fresh_vae,
        vae_from=args.vae_from,
        init_from=args.init_from,
    )
    logger.info("done: %s", json.dumps(dataclasses.asdict(report)["seconds"]))

"""The VAE stages: 1 (whole VAE on the wide world), 1b (decoder alone), 1c (whole VAE, base-world latents
anchored) and 1d (decoder on noised latents), their shared reconstruction loss and decoder-only freeze, the entry
points that refine a shipped preset's VAE in place, and reconstruction measures."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from tessera_shapes import drawing, sampling
from tessera_shapes.training.config import ShapesTrainingConfig, StepCallback
from tessera_shapes.training.data import to_tensor, vae_batches
from tessera_shapes.training.optimizer import cosine_lr, optimizer_step, smooth
from tessera_shapes.training.preset import build_vae


def train_vae(config: ShapesTrainingConfig, *, on_step: StepCallback | None = None) -> tuple[AutoencoderKL, float]:
    """Trains the VAE with MSE + 0.5 L1 (object pixels weighted up) + a tiny KL term.

    Returns:
        the trained VAE (eval mode) and its final smoothed loss.
    """
    torch.manual_seed(config.seed)
    vae = build_vae(config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, config.vae_steps, min(100, config.vae_steps // 10 + 1))
    )
    batches = vae_batches(config, stream=1)
    smoothed = float("nan")
    vae.train()
    for step in range(config.vae_steps):
        posterior, loss = _vae_loss(vae, to_tensor(next(batches)), config)
        loss = loss + config.vae_kl_weight * posterior.kl().mean()
        optimizer_step(optimizer, scheduler, vae.parameters(), loss)
        smoothed = smooth(smoothed, loss.item())
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
        optimizer, lambda s: cosine_lr(s, config.decoder_steps, min(50, config.decoder_steps // 10 + 1))
    )
    batches = vae_batches(config, stream=5)
    smoothed = float("nan")
    vae.decoder.train()
    for step in range(config.decoder_steps):
        _, loss = _vae_loss(vae, to_tensor(next(batches)), config)
        optimizer_step(optimizer, scheduler, trainable, loss)
        smoothed = smooth(smoothed, loss.item())
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
                np.asarray(drawing.render_scene(sampling.sample_base_scene(sampling.scene_rng(rng_seed + 3, i))))
                for i in range(64)
            ]
        )
        scale = float(1.0 / reference.encode(to_tensor(probe)).latent_dist.mean.std())
    vae.requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.anchor_lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_lr(s, config.anchor_steps, min(30, config.anchor_steps // 10 + 1))
    )
    smoothed = float("nan")
    index = 0
    vae.train()
    for step in range(config.anchor_steps):
        wide = [
            sampling.sample_wide_scene(
                sampling.scene_rng(rng_seed + 1, index + i), striped_share=config.anchor_striped_share
            )
            for i in range(24)
        ]
        base = [sampling.sample_base_scene(sampling.scene_rng(rng_seed + 2, index + i)) for i in range(16)]
        index += 24
        x_wide = to_tensor(np.stack([np.asarray(drawing.render_scene(scene)) for scene in wide]))
        x_base = to_tensor(np.stack([np.asarray(drawing.render_scene(scene)) for scene in base]))
        posterior, loss = _vae_loss(vae, torch.cat([x_wide, x_base[:8]]), config)
        with torch.no_grad():
            target = reference.encode(x_base).latent_dist.mean
        drift = ((vae.encode(x_base).latent_dist.mean - target) * scale).pow(2).mean()
        total = loss + config.anchor_weight * drift + config.vae_kl_weight * posterior.kl().mean()
        optimizer_step(optimizer, scheduler, vae.parameters(), total)
        smoothed = smooth(smoothed, loss.item())
        if on_step is not None:
            on_step("vae_anchored", step + 1, config.anchor_steps, smoothed)
    vae.train(False)
    return vae, smoothed


def latent_drift(before: AutoencoderKL, after: AutoencoderKL, images: np.ndarray) -> float:
    """RMS distance between two VAEs' latent means of ``images`` (uint8 ``(n, 64, 64, 3)``), in units of the
    ``before`` latents' std: how far a stage moved the latents a UNet was trained on."""
    with torch.no_grad():
        x = to_tensor(images)
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
        optimizer, lambda s: cosine_lr(s, config.harden_steps, min(30, config.harden_steps // 10 + 1))
    )
    with torch.no_grad():
        probe = sampling.draw_base_dataset(64, config.seed + 11).images
        latent_std = float(vae.encode(to_tensor(probe)).latent_dist.mean.std())
    batches = vae_batches(config, stream=9)
    smoothed = float("nan")
    vae.decoder.train()
    for step in range(config.harden_steps):
        x = to_tensor(next(batches))
        with torch.no_grad():
            mean = vae.encode(x).latent_dist.mean
        level = torch.rand((len(x), 1, 1, 1), generator=generator) * config.harden_noise * latent_std
        noised = mean + level * torch.randn(mean.shape, generator=generator)
        loss = _reconstruction_loss(vae.decode(noised).sample, x, config)
        optimizer_step(optimizer, scheduler, trainable, loss)
        smoothed = smooth(smoothed, loss.item())
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
    drift = latent_drift(before, vae, sampling.draw_base_dataset(256, config.seed + 7)[0])
    # from_pretrained recorded this machine's absolute path; the shipped config should not carry it.
    vae.register_to_config(_name_or_path=f"{preset_dir.name}/vae")
    torch.nn.Module.to(vae, dtype=torch.float16).save_pretrained(preset_dir / "vae", safe_serialization=True)
    return drift


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Encodes and decodes ``images`` (uint8 ``(n, 64, 64, 3)``) through the latent mean; same shape back."""
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size])
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        out.append(((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 image stacks, in dB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * math.log10(255.0**2 / max(mse, 1e-12))

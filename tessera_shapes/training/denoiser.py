"""Stage 2: the UNet and text encoder trained jointly on pre-encoded latents (SD 1.5's noise schedule, epsilon
prediction, optional Min-SNR weighting, caption dropout), with an EMA of the weights and an optional warm start."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from tessera_shapes.tokenizer import MAX_LENGTH
from tessera_shapes.training.config import ShapesTrainingConfig, StepCallback
from tessera_shapes.training.optimizer import cosine_lr, optimizer_step, smooth
from tessera_shapes.training.preset import NUM_TRAIN_TIMESTEPS, build_scheduler, build_text_encoder, build_unet


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
        optimizer, lambda s: cosine_lr(s, config.unet_steps, config.warmup_steps)
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
        optimizer_step(optimizer, lr_schedule, params, loss)
        ema.update(step)
        smoothed = smooth(smoothed, per_sample.mean().item(), decay=0.99)
        if on_step is not None:
            on_step("unet", step + 1, config.unet_steps, smoothed)
        if on_checkpoint is not None and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.unet_steps:
            on_checkpoint(*ema_copies(), step + 1)
    ema_unet, ema_text = ema_copies()
    return ema_unet, ema_text, smoothed

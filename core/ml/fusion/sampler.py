"""The sampling machinery every fusion method shares: concept adapters, guided noise, the denoising loop.

A fusion method decides *which* adapters are active when the UNet predicts noise and how predictions are
combined; everything around that (attaching adapters, initial noise, classifier-free guidance, DPM-Solver++ steps,
decoding) lives here so the methods compared in evaluation differ only in that decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import PIL.Image
import torch

from core.errors import ModelLoadError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora
from core.ml.images import tensor_to_images
from core.progress import Progress, StepCallback

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``predict(model_input, t)``: scaled model input ``[2N or N, C, h, w]`` → guided noise ``[N, C, h, w]``."""

LatentGuide = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``guide(latents, t, i)``: called before step ``i`` predicts; returns the latents ``[N, C, h, w]`` to step from."""


def attach_concept(components: SDComponents, weights: EDLoRAWeights, adapter: str, num_layers: int) -> None:
    """Add a concept's text-encoder and UNet LoRA to the shared models as the named peft ``adapter`` (scale 1).

    Call inside ``lora_scope(text_encoder, unet)`` so the adapter is removed afterwards.

    Raises:
        ModelLoadError: the adapter's layer-wise embeddings or LoRA weights do not fit the loaded model.
    """
    if weights.num_layers != num_layers:
        raise ModelLoadError(
            f"adapter {weights.concept_name} has {weights.num_layers} layer-wise embeddings, "
            f"the UNet has {num_layers} cross-attention layers"
        )
    add_lora(
        components.text_encoder,
        adapter,
        rank=weights.rank,
        targets=TEXT_ENCODER_TARGETS,
        multiplier=1.0,
        state_dict=weights.text_encoder_lora,
    )
    add_lora(
        components.unet, adapter, rank=weights.rank, targets=UNET_TARGETS, multiplier=1.0, state_dict=weights.unet_lora
    )


def initial_latents(components: SDComponents, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """``[N, C, h, w]`` standard normal noise, image ``i`` drawn on CPU from its own seed (device independent)."""
    shape = (
        int(components.unet.config.in_channels),
        height // components.vae_scale_factor,
        width // components.vae_scale_factor,
    )
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(noise).to(components.device, components.dtype)


def guided_noise(
    unet: torch.nn.Module,
    model_input: torch.Tensor,
    t: torch.Tensor,
    *,
    positive: torch.Tensor,
    negative: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free-guided noise from whatever adapters are active on ``unet`` now.

    Args:
        model_input: ``[2N, C, h, w]`` (unconditional half first) when ``guidance_scale > 1``, else ``[N, C, h, w]``.
        positive, negative: ``[1, n_layers, seq, dim]`` layer-wise encoder states, broadcast over the batch.

    Returns:
        ``[N, C, h, w]``.
    """
    use_cfg = guidance_scale > 1.0
    count = model_input.shape[0] // 2 if use_cfg else model_input.shape[0]
    states = [negative.expand(count, -1, -1, -1)] if use_cfg else []
    states.append(positive.expand(count, -1, -1, -1))
    noise: torch.Tensor = unet(model_input, t, encoder_hidden_states=torch.cat(states)).sample
    if not use_cfg:
        return noise
    uncond, cond = noise.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def denoise(
    components: SDComponents,
    predict: NoisePredictor,
    *,
    seeds: Sequence[int],
    width: int,
    height: int,
    num_inference_steps: int,
    guidance_scale: float,
    on_step: StepCallback,
    guide: LatentGuide | None = None,
) -> list[PIL.Image.Image]:
    """Run DPM-Solver++ from each seed's noise with ``predict`` as the model, then decode.

    ``guide``, when given, sees (and may move) the latents before every step's prediction, e.g. for gradient-based
    layout guidance; it runs under whatever grad mode it enables itself.

    A private scheduler instance is built from the components' config, so no step state is shared. ``on_step`` gets
    ``Progress("sampling", i, total)`` after each step. Call under ``torch.no_grad()``.

    Returns:
        one RGB image of ``width x height`` per seed.
    """
    scheduler = type(components.scheduler).from_config(components.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=components.device)
    latents = initial_latents(components, seeds, height, width) * scheduler.init_noise_sigma
    use_cfg = guidance_scale > 1.0
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        if guide is not None:
            latents = guide(latents, t, i)
        model_input = torch.cat([latents] * 2) if use_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        latents = scheduler.step(predict(model_input, t), t, latents).prev_sample
        on_step(Progress("sampling", i + 1, len(timesteps)))
    pixels = components.vae.decode(latents / components.vae.config.scaling_factor).sample
    return tensor_to_images(pixels)

"""The sampling machinery every fusion method shares: initial noise, guided noise, the denoising loop.

A fusion method decides *which* adapters are active when the UNet predicts noise and how predictions are
combined; everything around that (initial noise, classifier-free guidance, DPM-Solver++ steps, decoding; adapters
are attached by ``core.ml.edlora.attach``) lives here so the methods compared in evaluation differ only in that
decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import PIL.Image
import torch

from core.ml.components import SDComponents
from core.ml.fusion.request import SamplingRequest
from core.ml.images import tensor_to_images
from core.progress import Progress

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``predict(model_input, t)``: scaled model input ``[2N or N, C, h, w]`` → guided noise ``[N, C, h, w]``."""

LatentGuide = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``guide(latents, t, i)``: called before step ``i`` predicts; returns the latents ``[N, C, h, w]`` to step from."""


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


def guided_predictor(
    unet: torch.nn.Module, *, positive: torch.Tensor, negative: torch.Tensor, guidance_scale: float
) -> NoisePredictor:
    """A ``NoisePredictor`` of ``guided_noise`` with fixed ``[1, n_layers, seq, dim]`` encoder states (one UNet pass
    per step with whatever adapters are active)."""

    def predict(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guided_noise(unet, model_input, t, positive=positive, negative=negative, guidance_scale=guidance_scale)

    return predict


def denoise(
    components: SDComponents, predict: NoisePredictor, request: SamplingRequest, *, guide: LatentGuide | None = None
) -> list[PIL.Image.Image]:
    """Run DPM-Solver++ from each of ``request``'s seeds' noise with ``predict`` as the model, then decode.

    ``guide``, when given, sees (and may move) the latents before every step's prediction, e.g. for gradient-based
    layout guidance; it runs under whatever grad mode it enables itself.

    A private scheduler instance is built from the components' config, so no step state is shared.
    ``request.on_step`` gets ``Progress("sampling", i, total)`` after each step. Call under ``torch.no_grad()``.

    Returns:
        one RGB image of ``request.width x request.height`` per seed.
    """
    scheduler = type(components.scheduler).from_config(components.scheduler.config)
    scheduler.set_timesteps(request.num_inference_steps, device=components.device)
    latents = initial_latents(components, request.seeds, request.height, request.width) * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        if guide is not None:
            latents = guide(latents, t, i)
        model_input = torch.cat([latents] * 2) if request.use_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        latents = scheduler.step(predict(model_input, t), t, latents).prev_sample
        request.on_step(Progress("sampling", i + 1, len(timesteps)))
    pixels = components.vae.decode(latents / components.vae.config.scaling_factor).sample
    return tensor_to_images(pixels)

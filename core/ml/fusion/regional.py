"""Regionally composed multi-concept sampling: the cheap fusion baseline (API ``fusion: "regional"``).

One *base path* samples the prompt with every ``<concept>`` written as its class word and no adapter; one *concept
path* per concept samples the prompt with that concept's ED-LoRA (its learned words, its LoRA at ``weight``) and
the other concepts as class words. At every denoising step each path's classifier-free-guided noise prediction is
computed from the same latents, and inside each concept's region (latent resolution) the concept's prediction
replaces the base one (overlapping regions average). Cost: ``(K + 1)`` UNet passes per step at batch ``2 · N``.

Concept adapters are injected as named peft adapters into the shared text encoder and UNet for the duration of
the call and switched per path (``set_adapter`` + scale); weights are never merged. Everything is removed in a
``finally``: the components come back exactly as they were. Not safe to run concurrently on one set of
components (the worker runs one job at a time per process).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from core.ml.components import SDComponents
from core.ml.edlora.attention import layerwise_cross_attention
from core.ml.edlora.lora import activate_lora, lora_scope
from core.ml.fusion.paths import SamplingPath, encode_paths
from core.ml.fusion.request import ConceptPlacement, GenerationResult, check_request
from core.ml.fusion.sampler import denoise, guided_noise
from core.ml.regions import region_masks
from core.progress import StepCallback, no_progress

# Placements and results are defined with the checks every fusion method shares; callers import them from here.
__all__ = ["ConceptPlacement", "GenerationResult", "generate_regional"]

logger = logging.getLogger(__name__)


def generate_regional(
    components: SDComponents,
    *,
    prompt: str,
    negative_prompt: str,
    placements: Sequence[ConceptPlacement],
    width: int,
    height: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    num_outputs: int = 1,
    on_step: StepCallback = no_progress,
) -> GenerationResult:
    """Generate images with several ED-LoRA concepts, each composed inside its region.

    With no placements this is plain text-to-image with the base model. The same arguments give the same pixels.

    Args:
        prompt: text with ``<name>`` for each concept (``name`` = ``weights.concept_name``); every placement's
            concept must appear, and no other ``<name>`` may.
        negative_prompt: classifier-free guidance's negative text (concept references become class words).
        placements: up to 4 concepts with their regions and weights.
        width, height: output size in pixels, multiples of 8 within 64..1024.
        num_inference_steps: DPM-Solver++ steps (1..150); ``on_step`` gets ``Progress("sampling", i, total)``
            after each.
        guidance_scale: CFG scale (0..30); at 1 or below, no unconditional pass is made.
        seed: seed of the first image; image ``i`` uses ``seed + i``.
        num_outputs: images to make (1..8).

    Returns:
        ``GenerationResult`` with the images, one mask per concept, and the seeds.

    Raises:
        InvalidRequestError: an argument breaks a rule (``field`` names it; ``UnknownConceptError`` for a prompt
            reference without a placement).
        ModelLoadError: an adapter does not fit the loaded model.
        JobCanceledError: raised by ``on_step``; nothing is left on the components.
    """
    # 1. Check inputs and lay out the regions.
    check_request(
        components, prompt, placements, width, height, num_inference_steps, guidance_scale, seed, num_outputs
    )
    masks, mask_images = region_masks(
        [p.region for p in placements], width=width, height=height, scale_factor=components.vae_scale_factor
    )
    seeds = [seed + i for i in range(num_outputs)]
    unet, device = components.unet, components.device

    with torch.no_grad(), lora_scope(components.text_encoder, unet), layerwise_cross_attention(unet) as num_layers:
        # 2. Attach each concept's LoRA as a named adapter and encode every path's prompts.
        base, paths = encode_paths(
            components,
            prompt=prompt,
            negative_prompt=negative_prompt,
            placements=placements,
            num_layers=num_layers,
        )

        # 3. Denoise: every path predicts from the same latents; concept predictions replace the base in-region.
        region = masks.to(device, components.dtype)[:, None]  # [K, 1, 1, h, w]

        def predict(path: SamplingPath, model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            activate_lora(unet, path.adapter, path.multiplier)
            return guided_noise(
                unet, model_input, t, positive=path.positive, negative=path.negative, guidance_scale=guidance_scale
            )

        def blended(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            noise_pred = predict(base, model_input, t)
            if paths:
                concept_preds = torch.stack([predict(path, model_input, t) for path in paths])  # [K, N, C, h, w]
                coverage = region.sum(dim=0)  # [1, 1, h, w]
                mixed = (concept_preds * region).sum(dim=0) / coverage.clamp(min=1.0)
                noise_pred = torch.where(coverage > 0, mixed, noise_pred)
            return noise_pred

        # 4. Sample and decode.
        images = denoise(
            components,
            blended,
            seeds=seeds,
            width=width,
            height=height,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            on_step=on_step,
        )
    logger.info("generated %d image(s) %dx%d with %d concept(s)", num_outputs, width, height, len(placements))
    return GenerationResult(images=images, masks=mask_images, seeds=seeds)

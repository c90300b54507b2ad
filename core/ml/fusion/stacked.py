"""Naive multi-LoRA stacking: every concept's adapter active at once, in one path, over the whole image.

This is the baseline that fusion methods are measured against, not a service fusion mode. The prompt is encoded
once with every concept's learned words and every concept's text-encoder LoRA active together, and the UNet runs
with all UNet LoRAs summed (``W + Σ_k m_k·B_k·A_k``) for a single guided prediction per step. Nothing keeps one
concept's adapter from acting on the other concept's words or pixels, which is exactly the interference that
region-aware fusion is supposed to remove. Cost: one UNet pass per step at batch ``2 · N``.

Adapters are attached for the call and removed in a ``finally``: the components come back exactly as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from core.ml.components import SDComponents
from core.ml.edlora.attention import layerwise_cross_attention
from core.ml.edlora.embeddings import encode_layerwise
from core.ml.edlora.lora import lora_scope
from core.ml.fusion.paths import bind_for, encode
from core.ml.fusion.request import ConceptPlacement, GenerationResult, check_request
from core.ml.fusion.sampler import attach_concept, denoise, guided_noise
from core.ml.prompts import bind_prompt
from core.progress import StepCallback, no_progress

logger = logging.getLogger(__name__)


def activate_together(model: torch.nn.Module, multipliers: Mapping[str, float]) -> None:
    """Make every adapter in ``multipliers`` active at once, each at its own scaling; the rest inactive.

    peft's LoRA layers add the scaled delta of each active adapter, so the model computes
    ``W x + Σ_k multipliers[k] · B_k A_k x`` in every adapted layer.
    """
    names = list(multipliers)
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        module.enable_adapters(True)
        module.set_adapter(names, inference_mode=True)
        if isinstance(module, LoraLayer):
            for name, multiplier in multipliers.items():
                module.set_scale(name, multiplier)


def generate_stacked(
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
    """Generate images with every concept's ED-LoRA stacked in one path (the naive multi-concept baseline).

    Takes the same arguments and refuses the same requests as ``generate_regional``; a placement's ``region`` is
    ignored (every adapter acts on the whole image, which is what this baseline stands for). With one placement this
    is ordinary single-concept ED-LoRA sampling.

    Args:
        prompt: text with ``<name>`` for each concept; every reference becomes that concept's learned words.
        negative_prompt: classifier-free guidance's negative text (concept references become the preset's
            stand-ins: class words, or learned embeddings, ``components.options.base_path_concept_words``).
        placements: up to 4 concepts; ``weight · weights.alpha`` is each LoRA's multiplier.
        width, height, num_inference_steps, guidance_scale, seed, num_outputs, on_step: as ``generate_regional``.

    Returns:
        ``GenerationResult`` with the images and seeds; ``masks`` is empty (no concept has a region).

    Raises:
        InvalidRequestError: an argument breaks a rule (``field`` names it).
        ModelLoadError: an adapter does not fit the loaded model.
        JobCanceledError: raised by ``on_step``; nothing is left on the components.
    """
    check_request(
        components, prompt, placements, width, height, num_inference_steps, guidance_scale, seed, num_outputs
    )
    names = {p.weights.concept_name for p in placements}
    parts = bind_prompt(prompt, learned=names, class_words={})
    negative_parts = bind_for(components, negative_prompt, placements, field="negative_prompt")
    embeddings = {p.weights.concept_name: p.weights.token_embeddings for p in placements}
    seeds = [seed + i for i in range(num_outputs)]
    text_encoder, unet, tokenizer = components.text_encoder, components.unet, components.tokenizer

    with torch.no_grad(), lora_scope(text_encoder, unet), layerwise_cross_attention(unet) as num_layers:
        multipliers: dict[str, float] = {}
        for i, placement in enumerate(placements):
            adapter = f"tessera_concept_{i}"
            attach_concept(components, placement.weights, adapter, num_layers)
            multipliers[adapter] = placement.weight * placement.weights.alpha
        if multipliers:
            activate_together(text_encoder, multipliers)
            activate_together(unet, multipliers)
        # The negative prompt is encoded by the same (adapted) text encoder, as each concept path of conductor does.
        positive = encode_layerwise(tokenizer, text_encoder, [parts], embeddings, num_layers)
        negative = encode(components, negative_parts, placements, num_layers)

        def predict(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return guided_noise(
                unet, model_input, t, positive=positive, negative=negative, guidance_scale=guidance_scale
            )

        images = denoise(
            components,
            predict,
            seeds=seeds,
            width=width,
            height=height,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            on_step=on_step,
        )
    logger.info("generated %d image(s) %dx%d with %d stacked concept(s)", num_outputs, width, height, len(placements))
    return GenerationResult(images=images, seeds=seeds)

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
from collections.abc import Mapping

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from core.ml.components import SDComponents
from core.ml.edlora.attach import attach_concept
from core.ml.edlora.attention import layerwise_cross_attention
from core.ml.edlora.embeddings import encode_layerwise
from core.ml.edlora.lora import lora_scope
from core.ml.fusion.paths import adapter_name, bind_for, encode, multiplier
from core.ml.fusion.request import GenerationResult, SamplingRequest
from core.ml.fusion.sampler import denoise, guided_predictor

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


def generate_stacked(components: SDComponents, request: SamplingRequest) -> GenerationResult:
    """Generate images with every concept's ED-LoRA stacked in one path (the naive multi-concept baseline).

    Takes the same requests and refuses the same ones as ``generate_regional``; a placement's ``region`` is ignored
    (every adapter acts on the whole image, which is what this baseline stands for). With one placement this is
    ordinary single-concept ED-LoRA sampling. Every prompt reference becomes that concept's learned words; the
    negative prompt's become the preset's stand-ins (class words, or learned embeddings,
    ``components.options.base_path_concept_words``); ``weight · weights.alpha`` is each LoRA's multiplier.

    Returns:
        ``GenerationResult`` with the images and seeds; ``masks`` is empty (no concept has a region).

    Raises:
        InvalidRequestError: the request does not fit the loaded model (``field`` names it).
        ModelLoadError: an adapter does not fit the loaded model.
        JobCanceledError: raised by ``request.on_step``; nothing is left on the components.
    """
    request.check_fits(components)
    placements = request.placements
    names = {p.weights.concept_name for p in placements}
    parts = request.prompt.bind(learned=names, class_words={})
    negative_parts = bind_for(components, request.negative_prompt, field="negative_prompt")
    embeddings = {p.weights.concept_name: p.weights.token_embeddings for p in placements}
    text_encoder, unet, tokenizer = components.text_encoder, components.unet, components.tokenizer

    with torch.no_grad(), lora_scope(text_encoder, unet), layerwise_cross_attention(unet) as num_layers:
        multipliers: dict[str, float] = {}
        for i, placement in enumerate(placements):
            adapter = adapter_name(i)
            attach_concept(components, placement.weights, adapter, num_layers)
            multipliers[adapter] = multiplier(placement)
        if multipliers:
            activate_together(text_encoder, multipliers)
            activate_together(unet, multipliers)
        # The negative prompt is encoded by the same (adapted) text encoder, as each concept path of conductor does.
        positive = encode_layerwise(tokenizer, text_encoder, [parts], embeddings, num_layers)
        negative = encode(components, negative_parts, placements, num_layers)

        predict = guided_predictor(unet, positive=positive, negative=negative, guidance_scale=request.guidance_scale)
        images = denoise(components, predict, request)
    logger.info("generated %s, stacked", request.summary)
    return GenerationResult(images=images, seeds=request.seeds)

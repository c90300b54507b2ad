"""Regionally composed multi-concept sampling, as Mix-of-Show's regionally controllable sampling does it (API
``fusion: "regional"``).

Composition happens inside the attention layers of ONE UNet pass per denoising step
(``core.ml.fusion.regional_attention``):

- the *global prompt* is the user's prompt with every ``<concept>`` written as the preset's stand-in (its class
  word, or its learned embeddings without LoRA: ``components.options.base_path_concept_words``), encoded with the
  plain text encoder;
- each concept's *region prompt* is, by the preset's choice (``components.options.regional_region_prompt``), the
  part of the user's prompt that names it (``"own_clause"``, Mix-of-Show's: its clauses plus the clauses that name
  no concept, e.g. "a <red> on the left" from "a <red> on the left and a <blue> on the right"; the whole prompt
  when it names one concept) or the prompt with the concept in every slot (``"every_slot"``: "a <red> on the left
  and a <red> on the right"), written with its learned layer-wise embeddings (other concepts as stand-ins) and
  encoded with its text-encoder LoRA at ``weight · alpha``;
- in every cross-attention layer, conditional queries inside concept ``k``'s region attend to its region prompt
  (keys/values through its UNet LoRA), queries outside every region to the global prompt, overlapping regions
  average; every image-side attention projection applies the LoRA of the region its token is in (none outside);
- the unconditional rows attend to the global negative prompt (stand-ins, plain text encoder) everywhere.

Cost per step: one UNet pass at batch ``2 · N`` (``N`` without guidance), plus per attention layer ``K`` rank-``r``
LoRA products per projection and per cross-attention layer ``K`` extra attentions of the conditional rows against
the region prompts (``bench.fusion_cost`` measures it against plain sampling). Text: ``2 + K`` prompts encoded
once per call (``n_layers`` copies each when they hold learned embeddings).

Concept adapters are attached as named peft adapters (their weights are read by the attention processors, never
merged) and removed in a ``finally`` with the processors: the components come back exactly as they were. Not safe to
run concurrently on one set of components (the worker runs one job at a time per process).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from core.ml.components import SDComponents
from core.ml.edlora.attention import cross_attention_layer_names
from core.ml.edlora.lora import activate_lora, lora_scope
from core.ml.fusion.paths import attach_concepts, bind_for, encode, multiplier
from core.ml.fusion.regional_attention import RegionalState, regional_attention
from core.ml.fusion.request import ConceptPlacement, GenerationResult, SamplingRequest
from core.ml.fusion.sampler import denoise, guided_predictor
from core.ml.regions import region_masks

# Placements, requests and results are defined with the checks every fusion method shares; callers import them here.
__all__ = [
    "ConceptPlacement",
    "GenerationResult",
    "RegionalPrompts",
    "SamplingRequest",
    "encode_regional_prompts",
    "generate_regional",
]

logger = logging.getLogger(__name__)


@dataclass
class RegionalPrompts:
    """The encoded texts of one regional generation.

    Args:
        adapters: the peft adapter name of each concept.
        positive: ``[1, n_layers, seq, dim]`` the global prompt (stand-ins, no adapter).
        negative: ``[1, n_layers, seq, dim]`` the global negative prompt (stand-ins, no adapter).
        regions: ``[K, n_layers, seq, dim]`` each concept's region prompt (its learned words and text-encoder
            LoRA), None without concepts.
        negative_regions: ``[K, n_layers, seq, dim]`` the negative prompt encoded with each concept's text-encoder
            LoRA (what the unconditional rows read inside that concept's region), None without concepts.
    """

    adapters: list[str]
    positive: torch.Tensor
    negative: torch.Tensor
    regions: torch.Tensor | None
    negative_regions: torch.Tensor | None


def encode_regional_prompts(components: SDComponents, request: SamplingRequest, *, num_layers: int) -> RegionalPrompts:
    """Attach every concept's LoRA and encode the global, negative and region prompts (see the module docstring).

    Call under ``torch.no_grad()`` inside ``lora_scope(text_encoder, unet)``. The UNet adapters are left attached
    but disabled (the regional processors apply their deltas themselves); the text encoder's are left inactive.

    Raises:
        ModelLoadError: an adapter does not fit the loaded model.
    """
    placements, prompt, negative_prompt = request.placements, request.prompt, request.negative_prompt
    adapters = attach_concepts(components, placements, num_layers)
    activate_lora(components.unet, None)
    positive = encode(components, bind_for(components, prompt), placements, num_layers)
    negative_parts = bind_for(components, negative_prompt, field="negative_prompt")
    negative = encode(components, negative_parts, placements, num_layers)
    regions, negatives = [], []
    for adapter, placement in zip(adapters, placements, strict=True):
        name = placement.weights.concept_name
        activate_lora(components.text_encoder, adapter, multiplier(placement))
        region_prompt = prompt.for_path(name, components.options.regional_region_prompt)
        parts = bind_for(components, region_prompt, adapted=[name])
        regions.append(encode(components, parts, placements, num_layers))
        negative_parts = bind_for(components, negative_prompt, field="negative_prompt", adapted=[name])
        negatives.append(encode(components, negative_parts, placements, num_layers))
    activate_lora(components.text_encoder, None)
    if not regions:
        return RegionalPrompts(adapters, positive, negative, None, None)
    return RegionalPrompts(adapters, positive, negative, torch.cat(regions), torch.cat(negatives))


def generate_regional(components: SDComponents, request: SamplingRequest) -> GenerationResult:
    """Generate images with several ED-LoRA concepts, each composed inside its region.

    With no placements this is plain text-to-image with the base model. The same request gives the same pixels.
    Every reference in ``request.prompt`` is a placement's concept; the negative prompt is used everywhere in the
    image (concept references become the preset's stand-ins); ``request.on_step`` gets ``Progress("sampling", i,
    total)`` after each DPM-Solver++ step.

    Returns:
        ``GenerationResult`` with the images, one mask per concept (its region), and the seeds.

    Raises:
        InvalidRequestError: the request does not fit the loaded model, or a region breaks a rule (``field`` names
            it).
        ModelLoadError: an adapter does not fit the loaded model.
        JobCanceledError: raised by ``on_step``; nothing is left on the components.
    """
    # 1. Check the request against the model and lay out the regions.
    request.check_fits(components)
    placements = request.placements
    masks, mask_images = region_masks(
        [p.region for p in placements],
        width=request.width,
        height=request.height,
        scale_factor=components.vae_scale_factor,
    )
    unet, device, dtype = components.unet, components.device, components.dtype
    num_layers = len(cross_attention_layer_names(unet))
    state = RegionalState(adapters=[], masks=masks[:, 0].to(device), prompts=None, cfg=request.use_cfg)

    with torch.no_grad(), lora_scope(components.text_encoder, unet), regional_attention(unet, state):
        # 2. Attach each concept's LoRA and encode the global, negative and region prompts.
        prompts = encode_regional_prompts(components, request, num_layers=num_layers)
        state.adapters = prompts.adapters
        state.prompts = None if prompts.regions is None else prompts.regions.to(dtype)
        if state.cfg and prompts.negative_regions is not None:
            state.negatives = prompts.negative_regions.to(dtype)

        # 3. Denoise: one UNet pass per step; the attention processors compose the regions.
        predict = guided_predictor(
            unet, positive=prompts.positive, negative=prompts.negative, guidance_scale=request.guidance_scale
        )

        # 4. Sample and decode.
        images = denoise(components, predict, request)
    logger.info("generated %s", request.summary)
    return GenerationResult(images=images, masks=mask_images, seeds=request.seeds)

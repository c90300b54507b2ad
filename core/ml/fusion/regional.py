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
from dataclasses import dataclass, field

import PIL.Image
import torch

from core.errors import InvalidRequestError, ModelLoadError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.attention import layerwise_cross_attention
from core.ml.edlora.embeddings import encode_layerwise
from core.ml.edlora.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, activate_lora, add_lora, lora_scope
from core.ml.images import tensor_to_images
from core.ml.prompts import bind_prompt, concept_refs
from core.ml.regions import Region, region_masks
from core.progress import Progress, StepCallback, no_progress

logger = logging.getLogger(__name__)

MAX_CONCEPTS = 4
MIN_SIDE, MAX_SIDE = 64, 1024
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_OUTPUTS = 8
MAX_WEIGHT = 2.0
MAX_SEED = 2**63 - 1


@dataclass
class ConceptPlacement:
    """One concept in a generation.

    Args:
        weights: the concept's adapter.
        region: normalised box ``(x0, y0, x1, y1)``, a mask image (white = region), or None for the automatic
            side-by-side layout (the None placements share it, in order).
        weight: LoRA strength at inference, relative to training: the LoRA multiplier is ``weight · weights.alpha``
            (Mix-of-Show samples single concepts at 0.7 with alpha = 1).
    """

    weights: EDLoRAWeights
    region: Region = None
    weight: float = 0.7


@dataclass
class GenerationResult:
    """What one generation produced.

    Args:
        images: ``num_outputs`` RGB images of ``width x height``.
        masks: one L-mode ``width x height`` mask per concept: the region it was composed in (latent grid, scaled up).
        seeds: the seed of each image (``seed, seed + 1, …``); that seed alone gives the same image up to float
            rounding of the batched pass (within 1/255 on CPU).
    """

    images: list[PIL.Image.Image]
    masks: list[PIL.Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


@dataclass
class _Path:
    adapter: str | None  # peft adapter name; None = base model
    multiplier: float
    positive: torch.Tensor  # [1, n_layers, seq, dim]
    negative: torch.Tensor  # [1, n_layers, seq, dim]


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be within {low}..{high}, got {value}", field=name)


def _check_inputs(
    components: SDComponents,
    prompt: str,
    placements: Sequence[ConceptPlacement],
    width: int,
    height: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    num_outputs: int,
) -> None:
    step = components.vae_scale_factor
    for name, side in (("width", width), ("height", height)):
        if side % step or not MIN_SIDE <= side <= MAX_SIDE:
            raise InvalidRequestError(
                f"{name} must be a multiple of {step} within {MIN_SIDE}..{MAX_SIDE}, got {side}", field=name
            )
    _check_range("num_inference_steps", num_inference_steps, 1, MAX_STEPS)
    _check_range("guidance_scale", guidance_scale, 0.0, MAX_GUIDANCE)
    _check_range("num_outputs", num_outputs, 1, MAX_OUTPUTS)
    _check_range("seed", seed, 0, MAX_SEED - num_outputs + 1)
    if len(placements) > MAX_CONCEPTS:
        raise InvalidRequestError(
            f"concepts must hold at most {MAX_CONCEPTS}, got {len(placements)}", field="concepts"
        )
    names = [p.weights.concept_name for p in placements]
    if len(set(names)) != len(names):
        raise InvalidRequestError(f"concepts must name each concept once, got {names}", field="concepts")
    referenced = set(concept_refs(prompt))
    hidden = int(components.text_encoder.config.hidden_size)
    for i, placement in enumerate(placements):
        weights = placement.weights
        _check_range(f"concepts[{i}].weight", placement.weight, 0.0, MAX_WEIGHT)
        if weights.concept_name not in referenced:
            raise InvalidRequestError(
                f"prompt must reference every concept given, <{weights.concept_name}> is missing: {prompt!r}",
                field="prompt",
            )
        if weights.base_model_id != components.base_model_id:
            raise InvalidRequestError(
                f"concepts[{i}] ({weights.concept_name}) was trained on {weights.base_model_id}, "
                f"this worker runs {components.base_model_id}",
                field=f"concepts[{i}]",
            )
        if weights.token_embeddings.shape[2] != hidden:
            raise ModelLoadError(
                f"adapter {weights.concept_name} has {weights.token_embeddings.shape[2]}-wide embeddings, "
                f"the text encoder needs {hidden}"
            )


def _initial_latents(components: SDComponents, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """``[N, C, h, w]`` standard normal noise, image ``i`` drawn on CPU from its own seed (device independent)."""
    shape = (
        int(components.unet.config.in_channels),
        height // components.vae_scale_factor,
        width // components.vae_scale_factor,
    )
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(noise).to(components.device, components.dtype)


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
    _check_inputs(
        components, prompt, placements, width, height, num_inference_steps, guidance_scale, seed, num_outputs
    )
    masks, mask_images = region_masks(
        [p.region for p in placements], width=width, height=height, scale_factor=components.vae_scale_factor
    )
    class_words = {p.weights.concept_name: p.weights.class_word for p in placements}
    base_parts = bind_prompt(prompt, learned=(), class_words=class_words)
    negative_parts = bind_prompt(negative_prompt, learned=(), class_words=class_words, field="negative_prompt")
    seeds = [seed + i for i in range(num_outputs)]
    text_encoder, unet, tokenizer = components.text_encoder, components.unet, components.tokenizer
    device = components.device
    use_cfg = guidance_scale > 1.0

    with torch.no_grad(), lora_scope(text_encoder, unet), layerwise_cross_attention(unet) as num_layers:
        # 2. Attach each concept's LoRA as a named adapter and encode every path's prompts.
        paths: list[_Path] = []
        for i, placement in enumerate(placements):
            weights, adapter = placement.weights, f"tessera_concept_{i}"
            if weights.num_layers != num_layers:
                raise ModelLoadError(
                    f"adapter {weights.concept_name} has {weights.num_layers} layer-wise embeddings, "
                    f"the UNet has {num_layers} cross-attention layers"
                )
            te_state = weights.text_encoder_lora
            add_lora(
                text_encoder,
                adapter,
                rank=weights.rank,
                targets=TEXT_ENCODER_TARGETS,
                multiplier=1.0,
                state_dict=te_state,
            )
            add_lora(
                unet, adapter, rank=weights.rank, targets=UNET_TARGETS, multiplier=1.0, state_dict=weights.unet_lora
            )
            multiplier = placement.weight * weights.alpha
            activate_lora(text_encoder, adapter, multiplier)
            others = {k: v for k, v in class_words.items() if k != weights.concept_name}
            parts = bind_prompt(prompt, learned={weights.concept_name}, class_words=others)
            embeddings = {weights.concept_name: weights.token_embeddings}
            positive = encode_layerwise(tokenizer, text_encoder, [parts], embeddings, num_layers)
            negative = encode_layerwise(tokenizer, text_encoder, [negative_parts], {}, num_layers)
            paths.append(_Path(adapter, multiplier, positive, negative))
        activate_lora(text_encoder, None)
        base = _Path(
            None,
            0.0,
            encode_layerwise(tokenizer, text_encoder, [base_parts], {}, num_layers),
            encode_layerwise(tokenizer, text_encoder, [negative_parts], {}, num_layers),
        )

        # 3. Denoise: every path predicts from the same latents; concept predictions replace the base in-region.
        scheduler = type(components.scheduler).from_config(components.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=device)
        latents = _initial_latents(components, seeds, height, width) * scheduler.init_noise_sigma
        region = masks.to(device, components.dtype)[:, None]  # [K, 1, 1, h, w]

        def predict(path: _Path, model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            activate_lora(unet, path.adapter, path.multiplier)
            count = latents.shape[0]
            states = [path.negative.expand(count, -1, -1, -1)] if use_cfg else []
            states.append(path.positive.expand(count, -1, -1, -1))
            noise: torch.Tensor = unet(model_input, t, encoder_hidden_states=torch.cat(states)).sample
            if not use_cfg:
                return noise
            uncond, cond = noise.chunk(2)
            return uncond + guidance_scale * (cond - uncond)

        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            model_input = torch.cat([latents] * 2) if use_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise_pred = predict(base, model_input, t)
            if paths:
                concept_preds = torch.stack([predict(path, model_input, t) for path in paths])  # [K, N, C, h, w]
                coverage = region.sum(dim=0)  # [1, 1, h, w]
                blended = (concept_preds * region).sum(dim=0) / coverage.clamp(min=1.0)
                noise_pred = torch.where(coverage > 0, blended, noise_pred)
            latents = scheduler.step(noise_pred, t, latents).prev_sample
            on_step(Progress("sampling", i + 1, len(timesteps)))

        # 4. Decode.
        pixels = components.vae.decode(latents / components.vae.config.scaling_factor).sample
    logger.info("generated %d image(s) %dx%d with %d concept(s)", num_outputs, width, height, len(placements))
    return GenerationResult(images=tensor_to_images(pixels), masks=mask_images, seeds=seeds)

"""The texts each fusion path reads, and the concept adapters every path-based fusion attaches.

Shared by the fusion methods that give concepts their own prompts (``conductor``, ``regional``):

- Concept ``i``'s LoRA is attached as peft adapter ``tessera_concept_<i>`` to the text encoder and the UNet, both
  scaled by its multiplier ``weight · alpha`` (``attach_concepts``).
- A text is written for one adapter (or none) with ``core.ml.prompts.Prompt.bind_concepts``: the adapted concept is its
  learned words, every other concept its *stand-in*, the preset's choice ``components.options
  .base_path_concept_words`` (class word by default, or its learned embeddings without LoRA, which keeps each
  slot two tokens long).
- Conductor's *base path* reads the prompt with every concept as its stand-in and no adapter; *concept path* ``i``
  reads a text chosen by ``PathPrompt`` with concept ``i``'s text-encoder LoRA active: the full prompt
  (``"full"``), the part of it that names concept ``i`` (``"own_clause"``), or the prompt with concept ``i`` in
  every concept slot (``"every_slot"``, Concept Conductor's shipped configs).

Negative prompts are encoded by the same (adapted) text encoder as each path's positive prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer

from core.ml.components import SDComponents
from core.ml.edlora.attach import attach_concept
from core.ml.edlora.embeddings import encode_layerwise
from core.ml.edlora.lora import activate_lora
from core.ml.fusion.request import ConceptPlacement, SamplingRequest
from core.ml.prompts import PathPrompt, Prompt, PromptPart


@dataclass
class SamplingPath:
    """One path's adapter and encoded prompts.

    Args:
        adapter: peft adapter name of the concept, None for the base path.
        multiplier: the LoRA multiplier (``weight · alpha``; 0 for the base path).
        positive, negative: ``[1, n_layers, seq, dim]`` layer-wise encoder states.
    """

    adapter: str | None
    multiplier: float
    positive: torch.Tensor
    negative: torch.Tensor


def adapter_name(index: int) -> str:
    """The peft adapter name of the request's ``index``-th concept."""
    return f"tessera_concept_{index}"


def multiplier(placement: ConceptPlacement) -> float:
    """A concept's LoRA multiplier: ``placement.weight · weights.alpha`` (text encoder and UNet alike)."""
    return placement.weight * placement.weights.alpha


def set_lora_scale(model: torch.nn.Module, adapter: str, scale: float) -> None:
    """Set ``adapter``'s scaling in every peft LoRA layer of ``model`` (active adapters are left as they are)."""
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(adapter, scale)


def attach_concepts(components: SDComponents, placements: Sequence[ConceptPlacement], num_layers: int) -> list[str]:
    """Attach every concept's LoRA (``adapter_name(i)``), its UNet adapter scaled by ``multiplier(placement)``.

    Call inside ``lora_scope(text_encoder, unet)``. The text-encoder adapters are left inactive (activate one
    with ``activate_lora(text_encoder, name, multiplier)`` to encode with it).

    Returns:
        the adapter names, in placement order.

    Raises:
        ModelLoadError: an adapter does not fit the loaded model.
    """
    names = []
    for i, placement in enumerate(placements):
        name = adapter_name(i)
        attach_concept(components, placement.weights, name, num_layers)
        set_lora_scale(components.unet, name, multiplier(placement))
        names.append(name)
    activate_lora(components.text_encoder, None)
    return names


def bind_for(
    components: SDComponents, prompt: Prompt, *, adapted: Sequence[str] = (), field: str = "prompt"
) -> list[PromptPart]:
    """``prompt`` bound for a path that adapts ``adapted`` (names): the others are the preset's stand-ins."""
    stand_in = components.options.base_path_concept_words
    return prompt.bind_concepts(adapted=adapted, stand_in=stand_in, field=field)


def encode(
    components: SDComponents, parts: Sequence[PromptPart], placements: Sequence[ConceptPlacement], num_layers: int
) -> torch.Tensor:
    """Encode one bound text with whatever text-encoder adapter is active now: ``[1, n_layers, seq, dim]``.

    Every concept slot in ``parts`` takes that concept's learned layer-wise embeddings.
    """
    embeddings = {p.weights.concept_name: p.weights.token_embeddings for p in placements}
    return encode_layerwise(components.tokenizer, components.text_encoder, [list(parts)], embeddings, num_layers)


def encode_paths(
    components: SDComponents,
    request: SamplingRequest,
    *,
    num_layers: int,
    concept_prompt: PathPrompt = "full",
) -> tuple[SamplingPath, list[SamplingPath]]:
    """Attach every concept's LoRA (``attach_concepts``) and encode the base and concept paths.

    Call under ``torch.no_grad()`` inside ``lora_scope(text_encoder, unet)`` and ``layerwise``-aware processors.
    The UNet adapters are left attached, each scaled by its multiplier, for the caller to use; the text encoder's
    are left inactive.

    Args:
        concept_prompt: what each concept path reads (``PathPrompt``).

    Returns:
        ``(base, concepts)``.

    Raises:
        ModelLoadError: an adapter does not fit the loaded model.
    """
    placements = request.placements
    adapters = attach_concepts(components, placements, num_layers)
    text_encoder = components.text_encoder
    negative_parts = bind_for(components, request.negative_prompt, field="negative_prompt")
    concepts: list[SamplingPath] = []
    for adapter, placement in zip(adapters, placements, strict=True):
        name, scale = placement.weights.concept_name, multiplier(placement)
        activate_lora(text_encoder, adapter, scale)
        parts = bind_for(components, request.prompt.for_path(name, concept_prompt), adapted=[name])
        positive = encode(components, parts, placements, num_layers)
        negative = encode(components, negative_parts, placements, num_layers)
        concepts.append(SamplingPath(adapter, scale, positive, negative))
    activate_lora(text_encoder, None)
    base = SamplingPath(
        None,
        0.0,
        encode(components, bind_for(components, request.prompt), placements, num_layers),
        encode(components, negative_parts, placements, num_layers),
    )
    return base, concepts

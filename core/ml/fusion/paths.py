"""The prompts of each sampling path: a base path with class words, one path per concept with its ED-LoRA.

Shared by the fusion methods that sample several paths from the same latents (``regional``, ``conductor``): the
base path reads the prompt with every ``<concept>`` as its class word and no adapter; concept path ``i`` reads it
with concept ``i``'s learned words (its text-encoder LoRA active at ``weight · alpha``) and the other concepts as
class words. Negative prompts are encoded by the same (adapted) text encoder as each path's positive prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.ml.components import SDComponents
from core.ml.edlora.embeddings import encode_layerwise
from core.ml.edlora.lora import activate_lora
from core.ml.fusion.request import ConceptPlacement
from core.ml.fusion.sampler import attach_concept
from core.ml.prompts import bind_prompt


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


def encode_paths(
    components: SDComponents,
    *,
    prompt: str,
    negative_prompt: str,
    placements: Sequence[ConceptPlacement],
    num_layers: int,
) -> tuple[SamplingPath, list[SamplingPath]]:
    """Attach every concept's LoRA as adapter ``tessera_concept_<i>`` and encode the base and concept paths.

    Call under ``torch.no_grad()`` inside ``lora_scope(text_encoder, unet)`` and ``layerwise``-aware processors.
    The UNet adapters are left attached (scale 1) for the caller to use; the text encoder's are left inactive.

    Returns:
        ``(base, concepts)``.

    Raises:
        ModelLoadError: an adapter does not fit the loaded model.
    """
    class_words = {p.weights.concept_name: p.weights.class_word for p in placements}
    negative_parts = bind_prompt(negative_prompt, learned=(), class_words=class_words, field="negative_prompt")
    tokenizer, text_encoder = components.tokenizer, components.text_encoder
    concepts: list[SamplingPath] = []
    for i, placement in enumerate(placements):
        weights, adapter = placement.weights, f"tessera_concept_{i}"
        attach_concept(components, weights, adapter, num_layers)
        multiplier = placement.weight * weights.alpha
        activate_lora(text_encoder, adapter, multiplier)
        others = {k: v for k, v in class_words.items() if k != weights.concept_name}
        parts = bind_prompt(prompt, learned={weights.concept_name}, class_words=others)
        embeddings = {weights.concept_name: weights.token_embeddings}
        positive = encode_layerwise(tokenizer, text_encoder, [parts], embeddings, num_layers)
        negative = encode_layerwise(tokenizer, text_encoder, [negative_parts], {}, num_layers)
        concepts.append(SamplingPath(adapter, multiplier, positive, negative))
    activate_lora(text_encoder, None)
    base_parts = bind_prompt(prompt, learned=(), class_words=class_words)
    base = SamplingPath(
        None,
        0.0,
        encode_layerwise(tokenizer, text_encoder, [base_parts], {}, num_layers),
        encode_layerwise(tokenizer, text_encoder, [negative_parts], {}, num_layers),
    )
    return base, concepts

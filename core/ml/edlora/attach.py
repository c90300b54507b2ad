"""Putting a trained concept on the shared models: its ED-LoRA as a named peft adapter of the text encoder and UNet.

Fusion attaches every concept of a request this way (``core.ml.fusion.paths.attach_concepts``), and the attention
diagnostic attaches the concept it measures; both inside ``lora_scope``, which removes the adapters again.
"""

from __future__ import annotations

from core.errors import ModelLoadError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora


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

"""The ED-LoRA cross-attention processor: each ``attn2`` reads its own layer's slice of the encoder states.

ED-LoRA conditions the UNet on ``encoder_hidden_states`` of shape ``[B, n_layers, seq, dim]`` (the prompt encoded
once per cross-attention layer). Stock diffusers processors expect ``[B, seq, dim]``, so every ``attn2`` gets an
``EDLoRAAttnProcessor`` that picks slice ``[:, l]`` and hands the rest to the processor it wraps. Installed and
removed only through ``unet.set_attn_processor``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

_BLOCK_ORDER = ("down_blocks.", "mid_block.", "up_blocks.")


def cross_attention_layer_names(unet: UNet2DConditionModel) -> list[str]:
    """Processor names of every cross-attention (``attn2``) layer, in ED-LoRA's order: down → mid → up.

    ``unet.attn_processors`` lists down → up → mid (module registration order); Mix-of-Show numbers the layers
    down → mid → up (16 for SD 1.5: down 0-5, mid 6, up 7-15), and adapters store rows in that order.
    """
    names = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    return sorted(names, key=lambda n: next(i for i, p in enumerate(_BLOCK_ORDER) if n.startswith(p)))


# Adapted from mixofshow.models.edlora.EDLoRA_AttnProcessor (Mix-of-Show@51270fd): picks the layer slice, then
# delegates to the wrapped diffusers processor instead of carrying its own copy of the attention math.
class EDLoRAAttnProcessor:
    """Feeds cross-attention layer ``layer_index`` its own slice of 4-D encoder states, then runs ``inner``.

    3-D encoder states (and self-attention calls) pass through unchanged, so the wrapped UNet still accepts
    ordinary conditioning.
    """

    def __init__(self, layer_index: int, inner: Any) -> None:
        self.layer_index = layer_index
        self.inner = inner

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention output ``[B, N, C]`` (or ``[B, C, H, W]``) for queries ``hidden_states``.

        Args:
            encoder_hidden_states: ``[B, n_layers, seq, dim]`` (this layer uses ``[:, layer_index]``) or
                ``[B, seq, dim]``.
        """
        if encoder_hidden_states is not None and encoder_hidden_states.ndim == 4:
            encoder_hidden_states = encoder_hidden_states[:, self.layer_index]
        output: torch.Tensor = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return output


@contextmanager
def layerwise_cross_attention(unet: UNet2DConditionModel) -> Iterator[int]:
    """Within the block ``unet`` accepts ``[B, n_layers, seq, dim]`` encoder states; its processors are restored after.

    Yields:
        ``n_layers``, the number of cross-attention layers.
    """
    originals = unet.attn_processors
    order = {name: i for i, name in enumerate(cross_attention_layer_names(unet))}
    unet.set_attn_processor(
        {name: EDLoRAAttnProcessor(order[name], proc) if name in order else proc for name, proc in originals.items()}
    )
    try:
        yield len(order)
    finally:
        unet.set_attn_processor(originals)

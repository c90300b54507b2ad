"""Capture of the concept tokens' cross-attention maps during a UNet forward, for the separation loss and diagnostics.

Only the columns of the concept's words are kept (``K`` = 2 per concept: ``V_rand`` and ``V_class``), averaged over
heads, so what is stored per layer is ``[B, N, K]`` (N = query positions) instead of ``[B·heads, N, seq]``.

Cost: a capturing ``attn2`` computes its probabilities explicitly (``Attention.get_attention_scores``) instead of
through fused SDPA, so autograd keeps ``[B·heads, N, seq]`` per captured layer for the backward pass (SD 1.5 at
64x64, batch 4, fp16: 4·8·4096·77·2 B ≈ 20 MB per layer, 5 such layers; 32x32 layers a quarter of that); the
kept columns themselves are a few hundred kB. Layers at resolutions the loss does not use keep their processor.
Installed and removed only through ``unet.set_attn_processor``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from transformers import CLIPTokenizer

from core.ml.edlora.attention import EDLoRAAttnProcessor
from core.ml.edlora.embeddings import tokenize_parts
from core.ml.prompts import PromptPart

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^mid_block\.")


class ConceptAttentionStore:
    """Where capturing processors put the concept columns of one UNet forward.

    Set ``columns`` before the forward; read ``by_resolution()`` after it; ``clear()`` before the next one.
    """

    def __init__(self) -> None:
        self.columns: torch.Tensor | None = None
        """``[B, K]`` long: the token positions whose attention is kept, per sample (``None`` = capture off)."""
        self._maps: dict[int, list[torch.Tensor]] = {}

    def clear(self) -> None:
        """Forget what the last forward captured (keeps ``columns``)."""
        self._maps = {}

    def add(self, probs: torch.Tensor) -> None:
        """Keep the concept columns of one layer's probabilities ``[B, heads, N, seq]`` as ``[B, N, K]`` float32."""
        if self.columns is None:
            return
        batch, heads, queries, _ = probs.shape
        if self.columns.shape[0] != batch:
            raise ValueError(f"capture columns are for batch {self.columns.shape[0]}, the UNet ran batch {batch}")
        index = self.columns.to(probs.device)[:, None, None, :].expand(batch, heads, queries, -1)
        kept = probs.gather(-1, index).float().mean(dim=1)  # [B, N, K]
        self._maps.setdefault(queries, []).append(kept)

    def by_resolution(self) -> dict[int, torch.Tensor]:
        """Captured maps averaged over the layers of each resolution.

        Returns:
            map side ``r`` → ``[B, r, r, K]`` float32 attention probabilities (rows of a square latent grid).
        """
        result = {}
        for queries, layers in self._maps.items():
            side = math.isqrt(queries)
            if side * side != queries:
                raise ValueError(f"attention capture needs square latents, got {queries} query positions")
            stacked = torch.stack(layers).mean(dim=0)  # [B, N, K]
            result[side] = stacked.reshape(stacked.shape[0], side, side, -1)
        return dict(sorted(result.items(), reverse=True))


def concept_columns(
    tokenizer: CLIPTokenizer, prompts: Sequence[Sequence[PromptPart]], concept_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where to capture: token positions of the concept's two words in each bound prompt (first occurrence).

    Returns:
        ``(columns, present)``: ``[B, 2]`` long positions, and ``[B]`` float 1/0 for whether both words fit in the
        prompt (a truncated prompt's sample should get weight 0; its columns are 0).
    """
    columns, present = [], []
    for parts in prompts:
        _, slots = tokenize_parts(tokenizer, parts)
        found = {word: pos for pos, name, word in reversed(slots) if name == concept_name}
        present.append(float(len(found) == 2))
        columns.append([found.get(0, 0), found.get(1, 0)])
    return torch.tensor(columns, dtype=torch.long), torch.tensor(present)


# Adapted from diffusers.models.attention_processor.AttnProcessor (diffusers==0.42.1): cross-attention only (no
# spatial/group norm, no residual branch: UNet attn2 has none), and the probabilities are handed to a store.
class ConceptAttnProcessor:
    """Explicit cross-attention whose probabilities' concept columns go to ``store``."""

    def __init__(self, store: ConceptAttentionStore) -> None:
        self.store = store

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,  # noqa: ARG002 (the processor protocol passes it)
    ) -> torch.Tensor:
        """Attention output ``[B, N, C]`` for queries ``hidden_states`` ``[B, N, C]`` and keys ``[B, seq, dim]``."""
        if encoder_hidden_states is None or hidden_states.ndim != 3:
            raise ValueError("ConceptAttnProcessor serves UNet cross-attention (3-D queries and encoder states)")
        batch, _, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)  # [B·heads, N, seq]
        self.store.add(probs.reshape(batch, attn.heads, *probs.shape[1:]))
        output = attn.batch_to_head_dim(torch.bmm(probs, value))
        output = attn.to_out[1](attn.to_out[0](output))
        result: torch.Tensor = output / attn.rescale_output_factor
        return result


def layer_downsample_factor(name: str, num_blocks: int) -> int:
    """How many times coarser than the latent grid a standard SD UNet's attention layer ``name`` works.

    ``down_blocks.i`` runs at ``2**i``, the mid block at ``2**(num_blocks - 1)``, ``up_blocks.i`` at
    ``2**(num_blocks - 1 - i)``. SD 1.5 (4 blocks): down 1, 2, 4; mid 8; up 4, 2, 1 (64, 32, 16, 8 cells).
    """
    match = _BLOCK.match(name)
    if match is None:
        raise ValueError(f"not a UNet attention processor name: {name!r}")
    if match.group(1) is None:
        return int(2 ** (num_blocks - 1))
    index = int(match.group(2))
    return int(2**index) if match.group(1) == "down_blocks" else int(2 ** (num_blocks - 1 - index))


@contextmanager
def capture_concept_attention(
    unet: UNet2DConditionModel, store: ConceptAttentionStore, factors: Collection[int] | None = None
) -> Iterator[list[str]]:
    """Within the block, cross-attention layers at the given resolutions feed ``store``; processors restored after.

    Use inside ``layerwise_cross_attention(unet)``: each selected layer keeps its ED-LoRA layer slice and computes
    attention with ``ConceptAttnProcessor``.

    Args:
        factors: downsampling factors from the latent grid to keep (``None`` = all cross-attention layers).

    Yields:
        the processor names that capture.
    """
    originals = unet.attn_processors
    num_blocks = len(unet.config.block_out_channels)
    chosen = {
        name: proc
        for name, proc in originals.items()
        if isinstance(proc, EDLoRAAttnProcessor)
        and (factors is None or layer_downsample_factor(name, num_blocks) in factors)
    }
    if not any(isinstance(p, EDLoRAAttnProcessor) for p in originals.values()):
        raise ValueError("capture_concept_attention must run inside layerwise_cross_attention(unet)")
    replaced = {
        name: EDLoRAAttnProcessor(proc.layer_index, ConceptAttnProcessor(store)) if name in chosen else proc
        for name, proc in originals.items()
    }
    unet.set_attn_processor(replaced)
    try:
        yield sorted(chosen)
    finally:
        unet.set_attn_processor(originals)

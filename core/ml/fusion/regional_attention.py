"""Regional composition inside the attention layers of one UNet pass, with each region's ED-LoRA (``regional``).

Mix-of-Show's regionally controllable sampling composes concepts inside every cross-attention layer: queries in a
region attend to that region's prompt, the others to the global prompt. Mix-of-Show runs it on one gradient-fused
model; our concepts keep their own UNet LoRA, so this processor also applies each concept's LoRA *per token*:

- every projection of image tokens (``attn1`` ``to_q/to_k/to_v/to_out.0``, ``attn2`` ``to_q/to_out.0``) computes
  ``y_j = W x_j + Σ_k w_k(j) · s_k · B_k A_k x_j`` where ``w_k(j) = m_k(j) / max(1, Σ_i m_i(j))`` (``m_k`` the
  region of concept ``k`` at the layer's resolution, ``s_k = weight · alpha``): a token inside one region gets that
  concept's LoRA, overlaps average the deltas, tokens outside every region get none;
- in ``attn2`` of the conditional rows, a token inside some region attends to each covering region's prompt
  (keys/values projected with that concept's LoRA at full strength, ``W + s_k B_k A_k``) and the outputs are
  averaged with the same ``w_k(j)``; a token outside every region attends to the global prompt (plain ``W``);
- the unconditional rows are composed the same way from the negative prompt: inside region ``k`` it is encoded
  with concept ``k``'s text-encoder LoRA and projected with its UNet LoRA, outside every region it is the plain
  global negative prompt. Both halves of classifier-free guidance therefore run concept ``k``'s whole model inside
  its region, as its own ED-LoRA sampling does; an unconditional half without the LoRA made guidance amplify the
  LoRA's whole effect (``guidance_scale`` times), which turned a purple concept pink.

A token inside a single region therefore sees exactly what concept ``k``'s own ED-LoRA model computes for it in
that layer (given the same layer input); self-attention stays global across regions, as in Mix-of-Show.

peft adapters stay attached (they hold the weights, and ``lora_scope`` removes them) but are never run through
peft's forward: the processor calls ``base_layer`` and adds ``lora_B[a](lora_A[a](x)) · scaling[a]`` itself.

Cost per layer on top of the plain layer: ``K`` rank-``r`` products per adapted projection over its tokens, and per
cross-attention layer ``K`` text-side key/value projections of the region prompts plus ``K`` attentions of the
conditional rows against them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from peft.tuners.lora import LoraLayer

from core.ml.edlora.attention import cross_attention_layer_names
from core.ml.regions import masks_at


@dataclass
class RegionalState:
    """What the processors of one regional forward read; owned by ``generate_regional``.

    Args:
        adapters: the peft adapter name of each concept (``K``), in region order.
        masks: ``[K, h, w]`` 0/1 regions on the latent grid, shared by every image of the batch.
        prompts: ``[K, n_layers, seq, dim]`` each concept's region prompt, encoded with its text-encoder LoRA
            (None when ``K = 0``).
        negatives: ``[K, n_layers, seq, dim]`` the negative prompt encoded with each concept's text-encoder LoRA
            (None when ``K = 0`` or without guidance).
        cfg: whether the rows are ``[uncond B, cond B]`` (True) or just ``[cond B]``.
    """

    adapters: list[str]
    masks: torch.Tensor
    prompts: torch.Tensor | None
    cfg: bool
    negatives: torch.Tensor | None = None
    _weights: dict[int, tuple[torch.Tensor, list[bool]]] = field(default_factory=dict)

    def weights_for(self, tokens: int) -> tuple[torch.Tensor, list[bool]]:
        """Per-token concept weights at a layer with ``tokens`` positions.

        Returns:
            ``(weights, present)``: ``weights`` is ``[K, tokens, 1]`` float32, ``m_k / max(1, Σ m)`` (so overlaps
            average and ``Σ_k weights`` is 1 inside any region, 0 outside); ``present[k]`` says whether concept
            ``k``'s region has any cell at this resolution.
        """
        if tokens not in self._weights:
            inside = masks_at(self.masks, tokens).float()  # [K, tokens]
            weights = inside / inside.sum(dim=0, keepdim=True).clamp(min=1.0)
            present = [bool(v) for v in inside.any(dim=-1).tolist()]
            self._weights[tokens] = (weights[..., None], present)
        return self._weights[tokens]


def _base(layer: torch.nn.Module) -> torch.nn.Module:
    return layer.get_base_layer() if isinstance(layer, LoraLayer) else layer


def lora_delta(layer: torch.nn.Module, x: torch.Tensor, adapter: str) -> torch.Tensor | None:
    """``scaling[a] · B_a A_a x`` of one peft LoRA layer for adapter ``a`` (None when the layer does not have it).

    Args:
        x: ``[..., in_features]``.

    Returns:
        ``[..., out_features]`` in ``x``'s dtype.
    """
    if not isinstance(layer, LoraLayer) or adapter not in layer.lora_A:
        return None
    lora_a, lora_b = layer.lora_A[adapter], layer.lora_B[adapter]
    delta: torch.Tensor = lora_b(lora_a(x.to(lora_a.weight.dtype))) * layer.scaling[adapter]
    return delta.to(x.dtype)


def regional_linear(
    layer: torch.nn.Module,
    x: torch.Tensor,
    adapters: Sequence[str],
    weights: tuple[torch.Tensor, list[bool]] | None,
) -> torch.Tensor:
    """``W x + Σ_k w_k ⊙ Δ_k x`` for image tokens ``x [rows, tokens, in]`` and weights ``[K, tokens, 1]``."""
    out: torch.Tensor = _base(layer)(x)
    if weights is None:
        return out
    per_token, present = weights
    for k, adapter in enumerate(adapters):
        if not present[k]:
            continue
        delta = lora_delta(layer, x, adapter)
        if delta is not None:
            out = out + per_token[k].to(out.dtype) * delta.to(out.dtype)
    return out


def adapted_linear(layer: torch.nn.Module, x: torch.Tensor, adapter: str) -> torch.Tensor:
    """``(W + s_a B_a A_a) x``: one adapter at full strength (text-side keys/values of a region prompt)."""
    out: torch.Tensor = _base(layer)(x)
    delta = lora_delta(layer, x, adapter)
    return out if delta is None else out + delta.to(out.dtype)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[rows, n, heads · d]`` → ``[rows, heads, n, d]``."""
    rows, n, inner = x.shape
    return x.view(rows, n, heads, inner // heads).transpose(1, 2)


def _attend(attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """SDPA of ``[rows, heads, n, d]`` queries on ``[rows or 1, heads, m, d]`` keys/values → ``[rows, n, inner]``."""
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    rows = query.shape[0]
    key, value = key.expand(rows, -1, -1, -1), value.expand(rows, -1, -1, -1)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(rows, query.shape[2], -1).to(query.dtype)


# Adapted from diffusers.models.attention_processor.AttnProcessor2_0 (diffusers==0.42.1): projections add per-token
# (image side) or per-region (text side) LoRA deltas, 4-D ED-LoRA states are sliced per layer, and cross-attention
# of the conditional rows is composed from region prompts. Attention masks are not supported.
class RegionalAttnProcessor:
    """One attention layer of the regional forward (see the module docstring).

    Args:
        state: shared per-call state.
        layer_index: this ``attn2``'s ED-LoRA layer (down → mid → up order), None for self-attention.
    """

    def __init__(self, state: RegionalState, *, layer_index: int | None) -> None:
        self.state = state
        self.layer_index = layer_index

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention output ``[rows, tokens, C]`` (or ``[rows, C, H, W]``) for queries ``hidden_states``.

        Args:
            encoder_hidden_states: the global prompt (conditional rows) and negative prompt (unconditional rows),
                ``[rows, n_layers, seq, dim]`` (this layer uses ``[:, layer_index]``) or ``[rows, seq, dim]``;
                None for self-attention.
        """
        if attention_mask is not None:
            raise ValueError("RegionalAttnProcessor does not support attention masks")
        state = self.state
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        tokens = hidden_states.shape[1]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        weights = state.weights_for(tokens) if state.adapters else None
        query = _heads(regional_linear(attn.to_q, hidden_states, state.adapters, weights), attn.heads)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if encoder_hidden_states is None:
            key = regional_linear(attn.to_k, hidden_states, state.adapters, weights)
            value = regional_linear(attn.to_v, hidden_states, state.adapters, weights)
        else:
            if encoder_hidden_states.ndim == 4 and self.layer_index is not None:
                encoder_hidden_states = encoder_hidden_states[:, self.layer_index]
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            key = _base(attn.to_k)(encoder_hidden_states)
            value = _base(attn.to_v)(encoder_hidden_states)
        hidden_states = _attend(attn, query, _heads(key, attn.heads), _heads(value, attn.heads))
        if encoder_hidden_states is not None and weights is not None:
            hidden_states = self._compose(attn, query, hidden_states, weights)
        hidden_states = regional_linear(attn.to_out[0], hidden_states, state.adapters, weights)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        out: torch.Tensor = hidden_states / attn.rescale_output_factor
        return out

    def _compose(
        self,
        attn: Attention,
        query: torch.Tensor,
        global_out: torch.Tensor,
        weights: tuple[torch.Tensor, list[bool]],
    ) -> torch.Tensor:
        """Region-prompt attention inside regions (averaged over overlaps), the global prompt's outside: conditional
        rows from the region prompts, unconditional rows from the per-concept negative prompts.

        Args:
            query: ``[rows, heads, tokens, d]``.
            global_out: ``[rows, tokens, inner]`` attention over the global (or negative) prompt.

        Returns:
            ``[rows, tokens, inner]``.
        """
        state = self.state
        if state.prompts is None or self.layer_index is None:
            return global_out
        half = query.shape[0] // 2 if state.cfg else 0
        composed = self._compose_rows(attn, query[half:], global_out[half:], state.prompts, weights)
        if not half:
            return composed
        uncond = global_out[:half]
        if state.negatives is not None:
            uncond = self._compose_rows(attn, query[:half], uncond, state.negatives, weights)
        return torch.cat([uncond, composed])

    def _compose_rows(
        self,
        attn: Attention,
        query: torch.Tensor,
        global_out: torch.Tensor,
        texts: torch.Tensor,
        weights: tuple[torch.Tensor, list[bool]],
    ) -> torch.Tensor:
        """``Σ_k w_k · attention(query, concept k's text through its LoRA)`` inside regions, ``global_out`` outside.

        Args:
            query: ``[rows, heads, tokens, d]``; global_out: ``[rows, tokens, inner]``;
            texts: ``[K, n_layers, seq, dim]`` one encoded text per concept.
        """
        per_token, present = weights
        mixed = torch.zeros_like(global_out)
        for k, adapter in enumerate(self.state.adapters):
            if not present[k]:
                continue
            text = texts[k : k + 1, self.layer_index].to(query.dtype)  # [1, seq, dim]
            if attn.norm_cross:
                text = attn.norm_encoder_hidden_states(text)
            key = _heads(adapted_linear(attn.to_k, text, adapter), attn.heads)
            value = _heads(adapted_linear(attn.to_v, text, adapter), attn.heads)
            mixed = mixed + per_token[k].to(mixed.dtype) * _attend(attn, query, key, value)
        covered = per_token.sum(dim=0) > 0  # [tokens, 1]
        return torch.where(covered, mixed, global_out)


@contextmanager
def regional_attention(unet: UNet2DConditionModel, state: RegionalState) -> Iterator[None]:
    """Within the block every attention layer of ``unet`` runs ``RegionalAttnProcessor``; processors are restored."""
    originals = unet.attn_processors
    order = {name: i for i, name in enumerate(cross_attention_layer_names(unet))}
    unet.set_attn_processor({name: RegionalAttnProcessor(state, layer_index=order.get(name)) for name in originals})
    try:
        yield
    finally:
        unet.set_attn_processor(originals)

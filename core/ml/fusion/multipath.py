"""All Concept Conductor paths in one batched UNet forward: per-sample adapters, feature injection, captures.

The UNet runs once per denoising step on a batch laid out *paths-major*: ``[path 0 (base) | path 1 | … | path K]``,
each path ``M`` rows (``M = 2B`` with classifier-free guidance: B unconditional rows, then B conditional ones).
Every attention layer gets a ``MultipathAttnProcessor`` (installed with ``unet.set_attn_processor``, restored
afterwards) that

- applies each row's own ED-LoRA: ``W x + s_a·B_a A_a x`` with ``a`` the row's adapter (``adapter_names``,
  ``"__base__"`` for none; ``s_a`` the adapter's peft scaling, set to ``weight · alpha`` when it is attached), the
  math of peft's mixed-batch inference (``adapter_names=``) computed on each run of consecutive rows that share an
  adapter (``adapter_runs``): a path is such a run, so its rows are a slice of the batch and its LoRA two small
  matmuls added in place, where peft gathers and scatters rows by index lists (3-4 extra kernels and an index
  upload per layer and adapter). No weights are merged, copied or switched between paths;
- feeds ``attn2`` its own layer's slice of 4-D ED-LoRA encoder states ``[rows, n_layers, seq, dim]``;
- in *merge* layers (the up blocks), overwrites the base path's attention output (after ``to_out[0]``) inside each
  concept's mask with that concept's output at the same layer, concepts in order (later ones win overlaps). Concept
  rows never read base rows, so the batch computes exactly what sequential per-path UNets would;
- in the *guidance* layer, records the self-attention keys (with autograd) and stops the forward (the UNet's
  remaining blocks are not needed for layout alignment);
- in the *mask* layer, on refinement steps only, also computes the head-averaged self-attention probabilities of
  the conditional rows (every other call uses fused SDPA and never materialises probabilities).

The roles are picked by resolution (``conductor_layers``): merge = every up-block attention layer; guidance = the
first self-attention of the coarsest up-block level at least 16 cells wide at the UNet's native sample size, mask =
the last self-attention of the finest level at most 32 wide. SD 1.5 (levels 16/32/64) gets Concept Conductor's
``up_blocks.1.attentions.0`` and ``up_blocks.2.attentions.2``; a model on an 8×8 latent gets its 8×8 level for
both when it has attention there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

from core.ml.components import MergeLayers
from core.ml.edlora.attention import cross_attention_layer_names
from core.ml.regions import layer_grid, masks_at

BASE_ADAPTER = "__base__"
"""peft's name for "no adapter" in ``adapter_names``."""

FeatureObserver = Callable[[str, torch.Tensor], None]
"""``observe(layer_name, output)``: a merge layer's output after injection, ``[paths, M, tokens, channels]``."""


class GuidanceStop(Exception):
    """Raised inside the guidance layer once its keys are recorded: the rest of the UNet is not needed."""


@dataclass(frozen=True)
class ConductorLayers:
    """Which attention layers play which role (processor names, ``…attn1.processor``).

    Chosen by resolution (``conductor_layers``); for SD 1.5 this is Concept Conductor's choice: guidance =
    ``up_blocks.1.attentions.0`` self-attention (16×16), mask = ``up_blocks.2.attentions.2`` self-attention
    (32×32), merge = all 18 up-block attention layers.
    """

    guidance: str
    mask: str
    merge: frozenset[str]


GUIDANCE_MIN_SIDE = 16
"""The guidance layer is at the coarsest up-block level whose native grid side is at least this (SD 1.5: 16×16)."""

MASK_MAX_SIDE = 32
"""The mask layer is at the finest up-block level whose native grid side is at most this (SD 1.5: 32×32; 64×64
would mean k-means on 4096×4096 affinities)."""


def up_block_sides(unet: UNet2DConditionModel) -> dict[str, int]:
    """The native grid side (at ``unet.config.sample_size``) that each up block's attention layers run at.

    Returns:
        ``{"up_blocks.<i>": side}``; SD 1.5: 8, 16, 32, 64.
    """
    sample = unet.config.sample_size
    side = int(sample) if isinstance(sample, int) else int(min(sample))
    for block in unet.down_blocks:
        if getattr(block, "downsamplers", None) is not None:
            side = math.ceil(side / 2)
    sides: dict[str, int] = {}
    for i, block in enumerate(unet.up_blocks):
        sides[f"up_blocks.{i}"] = side
        if getattr(block, "upsamplers", None) is not None:
            side *= 2
    return sides


def conductor_layers(
    unet: UNet2DConditionModel,
    *,
    guidance_min_side: int = GUIDANCE_MIN_SIDE,
    mask_max_side: int = MASK_MAX_SIDE,
    merge: MergeLayers = "up_blocks",
) -> ConductorLayers:
    """Pick the guidance, mask and merge layers of any SD-style UNet by resolution, not by hard-coded name.

    The up-block levels with attention are ordered by their native grid side (``up_block_sides``). Guidance: the
    first self-attention of the coarsest level with side >= ``guidance_min_side``, else of the finest level. Mask:
    the last self-attention of the finest level with side <= ``mask_max_side``, else of the coarsest level. Merge:
    every attention layer of the up blocks (``merge="up_blocks"``) or of the whole UNet (``"all"``). SD 1.5 gets
    Concept Conductor's layers (16×16 / 32×32 / all 18 up-block layers); a model whose latent grid is smaller
    than 16 (the shapes preset's 8×8) gets guidance and masks at its highest-resolution up-block level with
    attention.

    Raises:
        ValueError: the UNet has no attention in its up blocks.
    """
    names = list(unet.attn_processors)
    up_self = [n for n in names if n.startswith("up_blocks.") and n.endswith("attn1.processor")]
    if not up_self:
        raise ValueError("the UNet has no attention in its up blocks; Concept Conductor needs some")
    sides = up_block_sides(unet)
    levels: dict[int, list[str]] = {}
    for name in up_self:
        levels.setdefault(sides[".".join(name.split(".")[:2])], []).append(name)
    ordered = sorted(levels)  # coarse → fine
    guidance_side = next((side for side in ordered if side >= guidance_min_side), ordered[-1])
    fitting = [side for side in ordered if side <= mask_max_side]
    mask_side = fitting[-1] if fitting else ordered[0]
    return ConductorLayers(
        guidance=levels[guidance_side][0],
        mask=levels[mask_side][-1],
        merge=frozenset(n for n in names if merge == "all" or n.startswith("up_blocks.")),
    )


@dataclass
class MultipathState:
    """What the processors of one batched forward read and write; owned by the fusion loop.

    Args:
        paths: paths in the batch (base + concepts).
        adapter_names: one peft adapter name per row (``paths · rows_per_path`` entries), or None for no LoRA.
        masks: concept masks on the latent grid, ``[K, B, h, w]`` float 0/1 (K = paths − 1).
        cfg: whether each path's rows are ``[uncond B, cond B]`` (True) or just ``[cond B]``.
    """

    paths: int
    adapter_names: list[str] | None
    masks: torch.Tensor
    cfg: bool
    inject: bool = True
    capture_probs: bool = False
    guidance: bool = False
    keys: torch.Tensor | None = None  # [rows, tokens, channels], set by the guidance layer
    probs: torch.Tensor | None = None  # [paths, B, tokens, tokens], set by the mask layer
    observer: FeatureObserver | None = None
    _by_tokens: dict[int, torch.Tensor] = field(default_factory=dict)

    def set_masks(self, masks: torch.Tensor) -> None:
        """Replace the concept masks ``[K, B, h, w]``; per-resolution copies are rebuilt on next use."""
        self.masks = masks
        self._by_tokens.clear()

    def grid_for(self, tokens: int) -> tuple[int, int]:
        """The ``(h, w)`` of a layer with ``tokens`` positions: the latent grid halved (rounding up) 0..6 times."""
        return layer_grid(int(self.masks.shape[-2]), int(self.masks.shape[-1]), tokens)

    def masks_for(self, tokens: int, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """Concept masks at a layer's resolution, repeated over the CFG halves: ``[K, rows, tokens, 1]``.

        A cell is inside when at least half of the latent cells it covers are (Concept Conductor's 0.5 threshold).
        """
        if tokens not in self._by_tokens:
            self._by_tokens[tokens] = masks_at(self.masks, tokens)  # [K, B, tokens]
        masks = self._by_tokens[tokens]
        repeats = rows // masks.shape[1]
        return masks.repeat(1, repeats, 1)[..., None].to(dtype)


AdapterRun = tuple[int, int, str]
"""``(start, stop, adapter)``: rows ``start:stop`` of the batch all use ``adapter`` (never ``BASE_ADAPTER``)."""


def adapter_runs(adapter_names: Sequence[str]) -> list[AdapterRun]:
    """The runs of consecutive rows that share an adapter, base rows left out.

    A paths-major batch has one run per concept path (``[a, a, b, b]`` → ``[(0, 2, a), (2, 4, b)]``); any other
    layout (the guidance batch's trailing reference row) works too, with more, shorter runs.
    """
    runs: list[AdapterRun] = []
    start = 0
    for row in range(1, len(adapter_names) + 1):
        if row == len(adapter_names) or adapter_names[row] != adapter_names[start]:
            if adapter_names[start] != BASE_ADAPTER:
                runs.append((start, row, adapter_names[start]))
            start = row
    return runs


def _project(
    layer: torch.nn.Module, x: torch.Tensor, adapter_names: list[str] | None, runs: Sequence[AdapterRun]
) -> torch.Tensor:
    """``layer(x)`` for ``x [rows, tokens, in]`` with each row's own adapter: ``W x + s_a·B_a A_a x`` per run."""
    if adapter_names is None or not isinstance(layer, BaseTunerLayer):
        out: torch.Tensor = layer(x)  # no per-row adapters, or a plain Linear (no concept attached)
        return out
    if not isinstance(layer, LoraLayer) or layer.disable_adapters or layer.merged or layer.lora_variant:
        # What the slices below do not cover (disabled or merged adapters, DoRA-style variants): peft's own path.
        out = layer(x, adapter_names=adapter_names)
        return out
    out = layer.get_base_layer()(x)
    for start, stop, adapter in runs:
        if adapter not in layer.lora_A:
            continue
        lora_a, lora_b = layer.lora_A[adapter], layer.lora_B[adapter]
        # The order of peft's mixed-batch forward (scale, then cast), so both give the same bits.
        rows = layer.lora_dropout[adapter](x[start:stop].to(lora_a.weight.dtype))
        delta = lora_b(lora_a(rows)) * layer.scaling[adapter]
        out[start:stop] += delta.to(out.dtype)
    return out


# Adapted from diffusers.models.attention_processor.AttnProcessor2_0 (diffusers==0.42.1): projections apply per-row
# adapters, 4-D ED-LoRA states are sliced per layer, the output is fused across paths (merge layers),
# keys are recorded with an early stop (guidance layer), probabilities are computed on request (mask layer).
# Attention masks are not supported (the UNet is never called with one here).
class MultipathAttnProcessor:
    """One attention layer of the batched multipath forward (see the module docstring).

    Args:
        name: the processor name in ``unet.attn_processors``.
        state: shared per-call state.
        layer_index: this ``attn2``'s ED-LoRA layer (down → mid → up order), None for self-attention.
        merge, guidance, mask: the roles of this layer.
    """

    def __init__(
        self,
        name: str,
        state: MultipathState,
        *,
        layer_index: int | None,
        merge: bool,
        guidance: bool,
        mask: bool,
    ) -> None:
        self.name = name
        self.state = state
        self.layer_index = layer_index
        self.merge = merge
        self.guidance = guidance
        self.mask = mask

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention output ``[rows, tokens, C]`` (or ``[rows, C, H, W]``) for queries ``hidden_states``."""
        if attention_mask is not None:
            raise ValueError("MultipathAttnProcessor does not support attention masks")
        state, names = self.state, self.state.adapter_names
        runs = adapter_runs(names) if names is not None else []
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        rows = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = _project(attn.to_q, hidden_states, names, runs)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        else:
            if encoder_hidden_states.ndim == 4 and self.layer_index is not None:
                encoder_hidden_states = encoder_hidden_states[:, self.layer_index]
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = _project(attn.to_k, encoder_hidden_states, names, runs)
        if self.guidance and state.guidance:
            state.keys = key  # [rows, tokens, inner]
            raise GuidanceStop
        value = _project(attn.to_v, encoder_hidden_states, names, runs)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(rows, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(rows, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(rows, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if self.mask and state.capture_probs:
            state.probs = self._conditional_probs(attn, query, key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(rows, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = _project(attn.to_out[0], hidden_states, names, runs)
        if self.merge and state.inject and state.paths > 1:
            hidden_states = self._inject(hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        out: torch.Tensor = hidden_states / attn.rescale_output_factor
        return out

    def _inject(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Base rows ← concept rows inside each concept's mask, in concept order: ``h_0 = m_k h_k + (1 − m_k) h_0``."""
        state = self.state
        rows, tokens, channels = hidden_states.shape
        per_path = rows // state.paths
        paths = hidden_states.view(state.paths, per_path, tokens, channels)
        masks = state.masks_for(tokens, per_path, hidden_states.dtype)  # [K, M, tokens, 1]
        base = paths[0]
        for k in range(state.paths - 1):
            base = torch.lerp(base, paths[k + 1], masks[k])
        fused = torch.cat([base[None], paths[1:]])
        if state.observer is not None:
            state.observer(self.name, fused)
        return fused.reshape(rows, tokens, channels)

    def _conditional_probs(self, attn: Attention, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention probabilities of each path's conditional rows: ``[paths, B, tokens, tokens]``."""
        state = self.state
        per_path = query.shape[0] // state.paths
        start = per_path // 2 if state.cfg else 0
        q = query.view(state.paths, per_path, *query.shape[1:])[:, start:]
        k = key.view(state.paths, per_path, *key.shape[1:])[:, start:]
        scores: torch.Tensor = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale  # [P,B,heads,L,L]
        return scores.softmax(dim=-1).mean(dim=2)


@contextmanager
def multipath_attention(
    unet: UNet2DConditionModel, state: MultipathState, layers: ConductorLayers | None = None
) -> Iterator[ConductorLayers]:
    """Within the block every attention layer of ``unet`` runs ``MultipathAttnProcessor``; processors are restored.

    Args:
        layers: the roles; ``conductor_layers(unet)`` (default thresholds) when None.

    Yields:
        the roles used.
    """
    layers = layers if layers is not None else conductor_layers(unet)
    originals = unet.attn_processors
    order = {name: i for i, name in enumerate(cross_attention_layer_names(unet))}
    unet.set_attn_processor(
        {
            name: MultipathAttnProcessor(
                name,
                state,
                layer_index=order.get(name),
                merge=name in layers.merge,
                guidance=name == layers.guidance,
                mask=name == layers.mask,
            )
            for name in originals
        }
    )
    try:
        yield layers
    finally:
        unet.set_attn_processor(originals)


def path_adapter_names(adapters: Sequence[str | None], rows_per_path: int) -> list[str] | None:
    """``adapter_names`` for a paths-major batch: each path's adapter (None = base) repeated over its rows."""
    if all(a is None for a in adapters):
        return None
    return [a or BASE_ADAPTER for a in adapters for _ in range(rows_per_path)]

"""The attention separation loss (ml-methods §2.5): keep a concept's attention inside its mask, off other objects.

Inputs per training sample: the captured maps ``A_r`` ``[B, r, r, K]`` of the concept's K words
(``core.ml.edlora.capture``), and latent-grid masks ``[B, 1, h, w]`` in [0, 1]: the concept, the concept dilated by
``separation_dilation``, and the union of other objects. Masks reach each map side ``r`` by area interpolation (soft
edges, not nearest). Per resolution and word, with ``S = Σ_x A(x)``:

- leak = ``Σ_x A(x)·(1 − M_dilated(x)) / S``: attention mass outside the dilated mask, in [0, 1], scale-free;
- sep = ``Σ_x A(x)·O(x)·(1 − M_dilated(x)) / S``: attention mass on other objects (outside the dilated concept);
- fill (class word only) = ``MSE(A / max_x A, M)``, Break-A-Scene's form (per-sample max).

The per-sample sum ``leak_w·leak + other_w·sep + fill_w·fill`` is weighted by the timestep weight and averaged over
samples, words and resolutions (a mean, so the weight does not grow with the number of resolutions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from core.training_options import EDLoRAConfig

_EPS = 1e-8


@dataclass
class SeparationMasks:
    """Latent-grid masks of a batch, each ``[B, 1, h, w]`` float in [0, 1]."""

    concept: torch.Tensor
    dilated: torch.Tensor
    others: torch.Tensor


class SeparationResult(NamedTuple):
    """What ``separation_loss`` returns.

    Args:
        loss: scalar, not yet multiplied by ``separation_loss_weight``.
        in_mask: side ``r`` → ``[B, K]`` share of each word's attention inside the (undilated) concept mask, detached.
        on_others: side ``r`` → ``[B, K]`` share on other objects outside the dilated concept (the ``sep`` quantity,
            before its weight), detached; exactly 0 for samples without other objects.
    """

    loss: torch.Tensor
    in_mask: dict[int, torch.Tensor]
    on_others: dict[int, torch.Tensor]


def resize_mask(mask: torch.Tensor, side: int) -> torch.Tensor:
    """``[B, 1, h, w]`` → ``[B, side, side]`` by area averaging (bilinear when upsampling)."""
    if mask.shape[-1] >= side:
        resized = F.interpolate(mask.float(), size=(side, side), mode="area")
    else:
        resized = F.interpolate(mask.float(), size=(side, side), mode="bilinear", align_corners=False)
    return resized[:, 0]


def mass_inside(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of each word's attention inside a soft region.

    Args:
        maps: ``[B, r, r, K]`` non-negative attention.
        region: ``[B, r, r]`` in [0, 1].

    Returns:
        ``[B, K]`` in [0, 1].
    """
    total = maps.sum(dim=(1, 2)) + _EPS
    return (maps * region[..., None]).sum(dim=(1, 2)) / total


def leakage_term(maps: torch.Tensor, dilated: torch.Tensor) -> torch.Tensor:
    """Attention mass outside the dilated mask: ``[B, r, r, K]``, ``[B, r, r]`` → ``[B, K]`` in [0, 1]."""
    return 1.0 - mass_inside(maps, dilated)


def fill_term(word_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Break-A-Scene's cross-attention MSE: ``[B, r, r]`` map (max-normalised per sample) vs mask → ``[B]``."""
    peak = word_map.amax(dim=(1, 2), keepdim=True) + _EPS
    return ((word_map / peak - mask) ** 2).mean(dim=(1, 2))


def timestep_weight(timesteps: torch.Tensor, config: EDLoRAConfig, num_timesteps: int) -> torch.Tensor:
    """Per-sample weight of the attention terms: the gate ``t < separation_max_timestep`` times the weighting."""
    t = timesteps.float()
    weight = (t < config.separation_max_timestep).float()
    if config.separation_timestep_weighting == "linear":
        weight = weight * (1.0 - t / num_timesteps)
    return weight


def separation_loss(
    maps: dict[int, torch.Tensor],
    masks: SeparationMasks,
    *,
    weights: torch.Tensor,
    config: EDLoRAConfig,
    class_word_index: int = 1,
) -> SeparationResult:
    """The unweighted-by-lambda attention loss and, detached, the attention shares in the mask and on other objects.

    Args:
        maps: side ``r`` → ``[B, r, r, K]`` captured maps (``ConceptAttentionStore.by_resolution``).
        masks: the batch's latent-grid masks.
        weights: ``[B]`` per-sample weight (timestep gate/weighting, 0 for samples without concept tokens).
        class_word_index: which of the K words the fill term applies to (``V_class``).

    Returns:
        ``SeparationResult``: the scalar loss (multiply by ``separation_loss_weight``), and per resolution the
        attention share inside the concept mask and on other objects.
    """
    terms = []
    in_mask: dict[int, torch.Tensor] = {}
    on_others: dict[int, torch.Tensor] = {}
    for side, side_maps in maps.items():
        concept = resize_mask(masks.concept, side).to(side_maps.device)
        dilated = resize_mask(masks.dilated, side).to(side_maps.device)
        # Other objects count only outside the dilated concept: touching the concept's rim is the leak term's job.
        others = resize_mask(masks.others, side).to(side_maps.device) * (1.0 - dilated)
        per_sample = torch.zeros(side_maps.shape[0], device=side_maps.device)
        if config.separation_leak_weight:
            per_sample = per_sample + config.separation_leak_weight * leakage_term(side_maps, dilated).mean(dim=1)
        if config.separation_other_weight:
            per_sample = per_sample + config.separation_other_weight * mass_inside(side_maps, others).mean(dim=1)
        if config.separation_fill_weight:
            fill = fill_term(side_maps[..., class_word_index], concept)
            per_sample = per_sample + config.separation_fill_weight * fill
        terms.append((per_sample * weights.to(per_sample.device)).mean())
        in_mask[side] = mass_inside(side_maps.detach(), concept)
        on_others[side] = mass_inside(side_maps.detach(), others)
    if not terms:
        return SeparationResult(torch.zeros(()), in_mask, on_others)
    return SeparationResult(torch.stack(terms).mean(), in_mask, on_others)

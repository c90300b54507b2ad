"""Concept Conductor's layout side: the layout reference, the concepts' initial masks and the layout-alignment step.

*Layout alignment* moves the latent before a step's prediction so that the self-attention keys of the guidance layer
match a reference: ``z ← z − w ∇_z [ℓ(K_0, K_ref) + c · mean_i ℓ(K_i, K_ref)]`` with ``ℓ(K, K_ref) = Σ_b mean
(K_b − K_ref)²``. The reference is the request's layout image (DDIM-inverted to the same timestep), or without one
the base path's own keys (detached). One partial UNet forward (all paths and the reference in one batch, stopped
right after the guidance layer, ``core.ml.fusion.multipath``) and one backward.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import PIL.Image
import torch

from core.errors import InvalidRequestError
from core.ml.components import SDComponents
from core.ml.fusion.conductor_config import ConductorConfig
from core.ml.fusion.inversion import nearest_latent
from core.ml.fusion.multipath import GuidanceStop, MultipathState
from core.ml.fusion.request import ConceptPlacement
from core.ml.prompts import ConceptSlot, PromptPart, parts_text
from core.ml.regions import image_mask, region_masks


@dataclass
class LayoutReference:
    """A layout to follow: an image, and optionally one mask per concept (white = where it is in the image).

    Masks, when given, are the concepts' initial masks (instead of their regions).
    """

    image: PIL.Image.Image
    masks: list[PIL.Image.Image] | None = None


@dataclass
class Guidance:
    """Everything the layout-alignment step needs, fixed for the call."""

    positive: torch.Tensor  # [P·B (+1), n_layers, seq, dim]: cond states of every path (+ the reference)
    adapter_names: list[str] | None
    trajectory: dict[int, torch.Tensor] | None  # inverted reference latents, or None (base path as reference)
    steps: frozenset[int]
    history: list[int] = field(default_factory=list)


def initial_masks(
    components: SDComponents,
    placements: Sequence[ConceptPlacement],
    layout: LayoutReference | None,
    width: int,
    height: int,
) -> torch.Tensor:
    """``[K, h, w]`` disjoint 0/1 latent masks: layout masks, else regions; later concepts win overlaps."""
    scale = components.vae_scale_factor
    if layout is not None and layout.masks is not None:
        if len(layout.masks) != len(placements):
            raise InvalidRequestError(
                f"layout.masks must hold one mask per concept ({len(placements)}), got {len(layout.masks)}",
                field="layout.masks",
            )
        grids = [image_mask(m, width=width // scale, height=height // scale) for m in layout.masks]
        for i, grid in enumerate(grids):
            if not bool(grid.any()):
                raise InvalidRequestError(f"layout.masks[{i}] covers no latent cell", field=f"layout.masks[{i}]")
        masks = torch.stack(grids).float()
    else:
        masks, _ = region_masks([p.region for p in placements], width=width, height=height, scale_factor=scale)
        masks = masks[:, 0]
    for k in range(masks.shape[0] - 1):
        masks[k] *= 1 - masks[k + 1 :].amax(dim=0)
    return masks


def reference_caption(parts: Sequence[PromptPart], placements: Sequence[ConceptPlacement]) -> str:
    """The layout reference's caption as a cache key: the base text, plus a digest of any learned embeddings in it."""
    text = parts_text(parts)
    slots = sorted({p.name for p in parts if isinstance(p, ConceptSlot)})
    if not slots:
        return text
    digest = hashlib.sha256()
    for placement in placements:
        if placement.weights.concept_name in slots:
            digest.update(placement.weights.concept_name.encode())
            digest.update(placement.weights.token_embeddings.detach().float().cpu().numpy().tobytes())
    return f"{text} [embeddings {digest.hexdigest()[:16]}]"


def _key_loss(keys: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``Σ_b mean_{n,d} (K_b − K_ref)²`` for ``keys [B, n, d]`` and ``reference [1 or B, n, d]``."""
    return (keys - reference).pow(2).mean(dim=(-1, -2)).sum()


def align_layout(
    unet: torch.nn.Module,
    state: MultipathState,
    guidance: Guidance,
    latents: torch.Tensor,
    t: torch.Tensor,
    paths: int,
    config: ConductorConfig,
) -> torch.Tensor:
    """One layout-alignment gradient step on ``latents [B, C, h, w]`` (see the module docstring)."""
    batch = latents.shape[0]
    main_names, inject = state.adapter_names, state.inject
    with torch.enable_grad():
        z = latents.detach().requires_grad_(True)
        inputs = [z] * paths
        if guidance.trajectory is not None:
            inputs.append(nearest_latent(guidance.trajectory, int(t)).to(z.dtype))
        state.adapter_names, state.inject, state.guidance = guidance.adapter_names, False, True
        try:
            unet(torch.cat(inputs), t, encoder_hidden_states=guidance.positive)
        except GuidanceStop:
            pass
        finally:
            state.adapter_names, state.inject, state.guidance = main_names, inject, False
        keys, state.keys = state.keys, None
        if keys is None:
            raise RuntimeError("the guidance layer did not run")
        per_path = keys[: paths * batch].view(paths, batch, *keys.shape[1:])
        if guidance.trajectory is not None:
            reference = keys[paths * batch :].detach()
            loss = _key_loss(per_path[0], reference)
        else:
            reference = per_path[0].detach()
            loss = torch.zeros((), device=z.device, dtype=torch.float32)
        if paths > 1:
            custom = torch.stack([_key_loss(per_path[i], reference) for i in range(1, paths)])
            loss = loss + config.custom_guidance_factor * custom.mean()
        (grad,) = torch.autograd.grad(loss.float(), z)
    guidance.history.append(int(t))
    return (latents - config.guidance_weight * grad).detach()

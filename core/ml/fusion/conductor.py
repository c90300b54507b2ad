"""Concept Conductor fusion (API ``fusion: "conductor"``, the default): multipath sampling with feature injection,
layout alignment and masks refined from self-attention (Yao et al. 2024, ml-methods §3).

Per denoising step ``s`` of ``S``:

1. *Layout alignment* (``s / S <= guidance_end``): the latent takes a gradient step so that the self-attention
   keys of the guidance layer match a layout reference: ``z ← z − w ∇_z [ℓ(K_0, K_ref) + c · mean_i ℓ(K_i, K_ref)]``
   with ``ℓ(K, K_ref) = Σ_b mean (K_b − K_ref)²``. The reference is the request's layout image (DDIM-inverted to
   the same timestep, with the base prompt as its caption); without one, the base path's own keys (detached), so
   the concept paths are pulled towards the base path's layout. One partial UNet forward (all paths and the
   reference in one batch, stopped right after the guidance layer) and one backward.
2. *Multipath denoising*: one UNet forward on ``[base | concept 1 | … | concept K]`` × ``[uncond, cond]`` rows with
   per-row ED-LoRA (text encoder and UNet both at ``weight · alpha``); in every up-block attention layer the base
   rows are overwritten inside each concept's mask by that concept's rows (``core.ml.fusion.multipath``). The base
   path's guided noise is the prediction.
3. *Mask refinement* (``refine_start <= s / S <= refine_end``, ``refine_updates`` times): k-means on the mask
   layer's self-attention of each path (``core.ml.fusion.refinement``); the new masks apply from the next step.

Paths read (``core.ml.fusion.paths``): the base path the prompt with every concept as the preset's stand-in
(class word, or learned embeddings without LoRA); concept path ``i`` what ``ConductorConfig.concept_prompt`` says,
by default the prompt with concept ``i`` in every slot, as Concept Conductor's shipped configs do. Layer roles are
chosen by resolution (``multipath.conductor_layers``): on SD 1.5 the reference's layers, on a model with an 8×8
latent grid its highest-resolution up-block attention.

Cost per step: one UNet forward at batch ``(K + 1) · 2B`` (the same FLOPs as ``K + 1`` sequential passes, in one
launch); guidance steps add a partial forward + backward at batch ``(K + 1) · B (+1)`` (partial: up to the
guidance layer, which on a model whose only usable level is its finest is nearly the whole UNet). Nothing is
merged, copied or switched per step: adapters are attached once as named peft adapters and removed in a
``finally``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import get_args

import numpy as np
import PIL.Image
import torch

from core.errors import InvalidRequestError
from core.ml.components import MergeLayers, SDComponents
from core.ml.edlora.attention import cross_attention_layer_names, layerwise_cross_attention
from core.ml.edlora.lora import lora_scope
from core.ml.fusion.inversion import InversionCache, invert_reference, nearest_latent
from core.ml.fusion.multipath import (
    GUIDANCE_MIN_SIDE,
    MASK_MAX_SIDE,
    FeatureObserver,
    GuidanceStop,
    MultipathState,
    conductor_layers,
    multipath_attention,
    path_adapter_names,
)
from core.ml.fusion.paths import SamplingPath, bind_for, encode, encode_paths
from core.ml.fusion.refinement import MaskTracks, refine_masks
from core.ml.fusion.request import ConceptPlacement, GenerationResult, check_request
from core.ml.fusion.sampler import denoise
from core.ml.prompts import ConceptSlot, PathPrompt, PromptPart, parts_text
from core.ml.regions import image_mask, region_masks
from core.progress import StepCallback, no_progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConductorConfig:
    """Concept Conductor's knobs, with step windows as fractions of the trajectory (defaults: ml-methods §3.4).

    The reference counts steps out of 200: guidance on steps 0-60 and refinement on 50, 55, …, 80 become
    ``guidance_end = 0.3`` and 7 updates over ``0.25..0.40``, which mean the same part of the trajectory at any
    step count.

    Args:
        guidance_end: layout alignment on steps ``s`` with ``s / S <= guidance_end`` (step 0 included; a negative
            value disables it).
        guidance_weight: ``w``, the plain gradient step size on the latent.
        custom_guidance_factor: ``c``, the weight of the concept paths' key loss.
        refine_start, refine_end: the refinement window, fractions of ``S``.
        refine_updates: refinements spread evenly over the window (duplicates at small ``S`` collapse).
        kmeans_restarts, kmeans_iterations: k-means initialisations per problem and Lloyd steps.
        overlap_threshold: a refined cluster overlapping the previous mask less than this (IoU) is replaced by the
            previous mask's bounding box (Concept Conductor's config: 0, i.e. always accept).
        inversion_steps: DDIM inversion steps for a layout image.
        inject: feature injection on (False only for ablations).
        concept_prompt: what each concept path reads (``core.ml.prompts.PathPrompt``): ``"every_slot"``
            (default; the reference's shipped config: "A <dog> and a <dog> on the beach" for the dog's path),
            ``"own_clause"`` (the clauses naming the concept: "a <dog> on the left"; the reference's README
            example is of this kind) or ``"full"`` (the full prompt, other concepts as their stand-ins).
        merge_layers: where concept features are injected (``core.ml.components.MergeLayers``): every up-block
            attention layer (the reference's choice) or every attention layer of the UNet.
        guidance_min_side, mask_max_side: layer roles by native grid side (``multipath.conductor_layers``):
            guidance at the coarsest up-block level at least ``guidance_min_side`` wide (else the finest), masks
            at the finest level at most ``mask_max_side`` wide (else the coarsest); SD 1.5: 16×16 and 32×32.
    """

    guidance_end: float = 0.3
    guidance_weight: float = 10.0
    custom_guidance_factor: float = 1.0
    refine_start: float = 0.25
    refine_end: float = 0.40
    refine_updates: int = 7
    kmeans_restarts: int = 100
    kmeans_iterations: int = 20
    overlap_threshold: float = 0.0
    inversion_steps: int = 100
    inject: bool = True
    concept_prompt: PathPrompt = "every_slot"
    merge_layers: MergeLayers = "up_blocks"
    guidance_min_side: int = GUIDANCE_MIN_SIDE
    mask_max_side: int = MASK_MAX_SIDE

    def __post_init__(self) -> None:
        if not 0.0 <= self.refine_start <= self.refine_end <= 1.0:
            raise ValueError(f"need 0 <= refine_start <= refine_end <= 1, got {self.refine_start}, {self.refine_end}")
        if self.refine_updates < 0 or self.kmeans_restarts < 1 or self.kmeans_iterations < 0:
            raise ValueError("refine_updates >= 0, kmeans_restarts >= 1 and kmeans_iterations >= 0 are required")
        if self.inversion_steps < 1:
            raise ValueError(f"inversion_steps must be >= 1, got {self.inversion_steps}")
        if self.concept_prompt not in get_args(PathPrompt):
            raise ValueError(f"concept_prompt must be one of {get_args(PathPrompt)}, got {self.concept_prompt!r}")
        if self.merge_layers not in get_args(MergeLayers):
            raise ValueError(f"merge_layers must be one of {get_args(MergeLayers)}, got {self.merge_layers!r}")
        if self.guidance_min_side < 1 or self.mask_max_side < 1:
            raise ValueError("guidance_min_side and mask_max_side must be >= 1")

    def guidance_steps(self, total: int) -> frozenset[int]:
        """Step indices (0-based) that take a layout-alignment gradient step."""
        return frozenset(s for s in range(total) if s / total <= self.guidance_end)

    def refinement_steps(self, total: int) -> frozenset[int]:
        """Step indices after whose forward the masks are refined (they apply from the next step)."""
        # A refinement after the last forward would change nothing that is sampled: the last one is at S - 2.
        if self.refine_updates == 0 or total < 2:
            return frozenset()
        points = np.linspace(self.refine_start * total, self.refine_end * total, self.refine_updates)
        return frozenset(min(total - 2, math.floor(p + 0.5)) for p in points)


@dataclass
class LayoutReference:
    """A layout to follow: an image, and optionally one mask per concept (white = where it is in the image).

    Masks, when given, are the concepts' initial masks (instead of their regions).
    """

    image: PIL.Image.Image
    masks: list[PIL.Image.Image] | None = None


@dataclass
class _Guidance:
    """Everything the layout-alignment step needs, fixed for the call."""

    positive: torch.Tensor  # [P·B (+1), n_layers, seq, dim]: cond states of every path (+ the reference)
    adapter_names: list[str] | None
    trajectory: dict[int, torch.Tensor] | None  # inverted reference latents, or None (base path as reference)
    steps: frozenset[int]
    history: list[int] = field(default_factory=list)


def _initial_masks(
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


def _mask_images(masks: torch.Tensor, scale: int) -> list[PIL.Image.Image]:
    """``[K, B, h, w]`` → K·B L-mode images, image-major (image 0's concepts first), scaled up to pixels."""
    full = masks.transpose(0, 1).repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return [PIL.Image.fromarray((m.cpu().numpy() * 255).astype(np.uint8)) for per_image in full for m in per_image]


def _reference_caption(parts: Sequence[PromptPart], placements: Sequence[ConceptPlacement]) -> str:
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


def generate_conductor(
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
    layout: LayoutReference | None = None,
    config: ConductorConfig | None = None,
    inversions: InversionCache | None = None,
    on_step: StepCallback = no_progress,
    observe: FeatureObserver | None = None,
) -> GenerationResult:
    """Generate images with several ED-LoRA concepts fused by Concept Conductor.

    Takes the arguments of ``generate_regional`` (and refuses the same requests), plus:

    Args:
        layout: a reference whose layout the images follow (DDIM-inverted once per image+prompt, kept in
            ``inversions``); its masks, when given, are the concepts' initial masks.
        config: the method's knobs; None: ``ConductorConfig()`` with the preset's choices
            (``PresetOptions.conductor_refines_masks``, ``conductor_merge_layers``).
        inversions: a cache shared between calls (a worker keeps one).
        on_step: gets ``Progress("sampling", i, total)`` after each step; raising stops within that step.
        observe: diagnostic hook, called with each merge layer's fused output ``[paths, M, tokens, C]``.

    Returns:
        ``GenerationResult``: images, the final masks (``num_outputs · K`` images, image-major: image 0's concepts
        first; disjoint, each the region its concept was injected in at the last step), seeds.

    Raises:
        InvalidRequestError: an argument breaks a rule (``field`` names it).
        ModelLoadError: an adapter does not fit the loaded model.
        JobCanceledError: raised by ``on_step``; nothing is left on the components.
    """
    # 1. Check inputs; initial masks; prompts.
    check_request(
        components, prompt, placements, width, height, num_inference_steps, guidance_scale, seed, num_outputs
    )
    if config is None:
        options = components.options
        config = ConductorConfig(merge_layers=options.conductor_merge_layers)
        if not options.conductor_refines_masks:
            config = dataclasses.replace(config, refine_updates=0)
    masks = _initial_masks(components, placements, layout, width, height)
    base_parts = bind_for(components, prompt, placements)
    seeds = [seed + i for i in range(num_outputs)]
    unet, device, dtype = components.unet, components.device, components.dtype
    num_layers = len(cross_attention_layer_names(unet))
    paths_count, batch = len(placements) + 1, num_outputs
    use_cfg = guidance_scale > 1.0
    rows = 2 * batch if use_cfg else batch

    with torch.no_grad():
        # 2. The layout reference's trajectory (plain UNet, before any adapter is attached), captioned with the
        # base path's text (its stand-ins may be learned embeddings, hence layer-wise states).
        trajectory = None
        if layout is not None:
            with layerwise_cross_attention(unet):
                trajectory = invert_reference(
                    components,
                    layout.image,
                    prompt=_reference_caption(base_parts, placements),
                    prompt_states=encode(components, base_parts, placements, num_layers),
                    width=width,
                    height=height,
                    steps=config.inversion_steps,
                    cache=inversions,
                )

    state = MultipathState(
        paths=paths_count,
        adapter_names=None,
        masks=masks[:, None].expand(-1, batch, -1, -1).to(device),
        cfg=use_cfg,
        inject=config.inject,
        observer=observe,
    )
    generator = torch.Generator().manual_seed(seed)
    refine_at = config.refinement_steps(num_inference_steps) if placements else frozenset()

    layers = conductor_layers(
        unet,
        guidance_min_side=config.guidance_min_side,
        mask_max_side=config.mask_max_side,
        merge=config.merge_layers,
    )
    with torch.no_grad(), lora_scope(components.text_encoder, unet), multipath_attention(unet, state, layers):
        # 3. Adapters (text encoder and UNet at weight · alpha) and prompts of every path, laid out as one batch.
        base, concepts = encode_paths(
            components,
            prompt=prompt,
            negative_prompt=negative_prompt,
            placements=placements,
            num_layers=num_layers,
            concept_prompt=config.concept_prompt,
        )
        paths: list[SamplingPath] = [base, *concepts]
        adapters = [p.adapter for p in paths]
        main_names = path_adapter_names(adapters, rows)
        halves = [(p.negative, p.positive) if use_cfg else (p.positive,) for p in paths]
        main_states = torch.cat([s.expand(batch, -1, -1, -1) for half in halves for s in half]).to(dtype)
        state.adapter_names = main_names

        guidance = None
        steps = config.guidance_steps(num_inference_steps) if (placements or trajectory is not None) else frozenset()
        if steps:
            positive = [p.positive.expand(batch, -1, -1, -1) for p in paths]
            names = path_adapter_names(adapters, batch)
            if trajectory is not None:
                positive.append(base.positive)
                names = [*(names or ["__base__"] * (paths_count * batch)), "__base__"]
            guidance = _Guidance(torch.cat(positive).to(dtype), names, trajectory, steps)

        tracks: list[MaskTracks] = []
        current = {"step": 0}

        def guide(latents: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            current["step"] = i
            if guidance is None or i not in guidance.steps:
                return latents
            return _align_layout(unet, state, guidance, latents, t, paths_count, config)

        def predict(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            refine = current["step"] in refine_at
            state.capture_probs = refine
            batched = model_input.repeat(paths_count, 1, 1, 1)
            noise: torch.Tensor = unet(batched, t, encoder_hidden_states=main_states).sample
            state.capture_probs = False
            if refine and state.probs is not None:
                _refine(state, tracks, paths_count, config, generator)
            noise = noise[:rows]
            if not use_cfg:
                return noise
            uncond, cond = noise.chunk(2)
            return uncond + guidance_scale * (cond - uncond)

        # 4. Sample and decode.
        images = denoise(
            components,
            predict,
            seeds=seeds,
            width=width,
            height=height,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            on_step=on_step,
            guide=guide,
        )
    final = state.masks.float().cpu()
    logger.info(
        "conductor: %d image(s) %dx%d with %d concept(s), %d guided and %d refinement step(s); guidance layer %s, "
        "mask layer %s",
        num_outputs,
        width,
        height,
        len(placements),
        len(guidance.steps) if guidance else 0,
        len(refine_at),
        layers.guidance,
        layers.mask,
    )
    return GenerationResult(images=images, masks=_mask_images(final, components.vae_scale_factor), seeds=seeds)


def _align_layout(
    unet: torch.nn.Module,
    state: MultipathState,
    guidance: _Guidance,
    latents: torch.Tensor,
    t: torch.Tensor,
    paths: int,
    config: ConductorConfig,
) -> torch.Tensor:
    """One layout-alignment gradient step on ``latents [B, C, h, w]`` (see the module docstring, step 1)."""
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


def _refine(
    state: MultipathState,
    tracks: list[MaskTracks],
    paths: int,
    config: ConductorConfig,
    generator: torch.Generator,
) -> None:
    """Refine ``state.masks`` from the probabilities the mask layer just recorded."""
    probs, state.probs = state.probs, None
    if probs is None:
        return
    grid = state.grid_for(probs.shape[-1])
    if not tracks:
        tracks.append(MaskTracks.start(state.masks, grid))
    masks, tracks[0] = refine_masks(
        probs,
        state.masks,
        tracks[0],
        grid,
        cluster_counts=range(paths, 2 * paths),
        restarts=config.kmeans_restarts,
        iterations=config.kmeans_iterations,
        overlap_threshold=config.overlap_threshold,
        generator=generator,
    )
    state.set_masks(masks)

"""Concept Conductor fusion (API ``fusion: "conductor"``, the default): multipath sampling with feature injection,
layout alignment and masks refined from self-attention (Yao et al. 2024, ml-methods §3).

Per denoising step ``s`` of ``S``:

1. *Layout alignment* (``s / S <= guidance_end``, ``core.ml.fusion.layout``): the latent takes a gradient step so
   that the self-attention keys of the guidance layer match a layout reference:
   ``z ← z − w ∇_z [ℓ(K_0, K_ref) + c · mean_i ℓ(K_i, K_ref)]`` with ``ℓ(K, K_ref) = Σ_b mean (K_b − K_ref)²``.
   The reference is the request's layout image (DDIM-inverted to the same timestep, with the base prompt as its
   caption); without one, the base path's own keys (detached), so the concept paths are pulled towards the base
   path's layout. One partial UNet forward (all paths and the reference in one batch, stopped right after the
   guidance layer) and one backward.
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
latent grid its highest-resolution up-block attention. ``ConductorLoop`` holds the per-step work: ``guide`` (1),
``predict`` (2) and ``refine`` (3).

Cost per step: one UNet forward at batch ``(K + 1) · 2B`` (the same FLOPs as ``K + 1`` sequential passes, in one
launch); guidance steps add a partial forward + backward at batch ``(K + 1) · B (+1)`` (partial: up to the
guidance layer, which on a model whose only usable level is its finest is nearly the whole UNet). Nothing is
merged, copied or switched per step: adapters are attached once as named peft adapters and removed in a
``finally``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch

from core.ml.components import SDComponents
from core.ml.edlora.attention import cross_attention_layer_names, layerwise_cross_attention
from core.ml.edlora.lora import lora_scope
from core.ml.fusion.conductor_config import ConductorConfig
from core.ml.fusion.inversion import InversionCache, invert_reference
from core.ml.fusion.layout import Guidance, LayoutReference, align_layout, initial_masks, reference_caption
from core.ml.fusion.multipath import (
    FeatureObserver,
    MultipathState,
    conductor_layers,
    multipath_attention,
    path_adapter_names,
)
from core.ml.fusion.paths import SamplingPath, bind_for, encode, encode_paths
from core.ml.fusion.refinement import MaskTracks, refine_masks
from core.ml.fusion.request import GenerationResult, SamplingRequest
from core.ml.fusion.sampler import denoise

# The configuration and the layout reference are part of this method's call; callers import them from here.
__all__ = ["ConductorConfig", "ConductorLoop", "LayoutReference", "generate_conductor"]

logger = logging.getLogger(__name__)


def _mask_images(masks: torch.Tensor, scale: int) -> list[PIL.Image.Image]:
    """``[K, B, h, w]`` → K·B L-mode images, image-major (image 0's concepts first), scaled up to pixels."""
    full = masks.transpose(0, 1).repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return [PIL.Image.fromarray((m.cpu().numpy() * 255).astype(np.uint8)) for per_image in full for m in per_image]


@dataclasses.dataclass
class ConductorLoop:
    """The per-step work of one conductor generation, run by the shared sampler (``core.ml.fusion.sampler``):
    ``guide`` before each step's prediction, ``predict`` as the noise model, ``refine`` after a prediction that
    recorded the mask layer's attention.

    Args:
        unet: the UNet, with the multipath processors and the concepts' adapters on.
        state: what the multipath processors read (masks, adapter names, capture switches).
        config: the method's knobs.
        paths: ``K + 1`` (the base path and one per concept).
        main_states: ``[P · rows, n_layers, seq, dim]`` encoder states of every path's rows.
        guidance_scale: the request's CFG scale (guidance applies above 1).
        guidance: the layout-alignment inputs, None when no step is guided.
        refine_at: step indices after whose forward the masks are refined.
        generator: k-means' random source (seeded by the request).
    """

    unet: torch.nn.Module
    state: MultipathState
    config: ConductorConfig
    paths: int
    main_states: torch.Tensor
    guidance_scale: float
    guidance: Guidance | None
    refine_at: frozenset[int]
    generator: torch.Generator
    step: int = 0
    tracks: MaskTracks | None = None

    def guide(self, latents: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        """Before step ``i``: the latents ``[B, C, h, w]`` after a layout-alignment step, when ``i`` is guided."""
        self.step = i
        if self.guidance is None or i not in self.guidance.steps:
            return latents
        return align_layout(self.unet, self.state, self.guidance, latents, t, self.paths, self.config)

    def predict(self, model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The base path's guided noise ``[B, C, h, w]`` from one multipath forward of ``model_input``
        (``[rows, C, h, w]``, unconditional half first with CFG); refines the masks when this step is due."""
        refine = self.step in self.refine_at
        self.state.capture_probs = refine
        batched = model_input.repeat(self.paths, 1, 1, 1)
        noise: torch.Tensor = self.unet(batched, t, encoder_hidden_states=self.main_states).sample
        self.state.capture_probs = False
        if refine and self.state.probs is not None:
            self.refine()
        noise = noise[: model_input.shape[0]]
        if not self.state.cfg:
            return noise
        uncond, cond = noise.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)

    def refine(self) -> None:
        """Refine ``state.masks`` from the probabilities the mask layer just recorded (they apply from the next
        step)."""
        probs, self.state.probs = self.state.probs, None
        if probs is None:
            return
        grid = self.state.grid_for(probs.shape[-1])
        if self.tracks is None:
            self.tracks = MaskTracks.start(self.state.masks, grid)
        masks, self.tracks = refine_masks(
            probs,
            self.state.masks,
            self.tracks,
            grid,
            cluster_counts=range(self.paths, 2 * self.paths),
            restarts=self.config.kmeans_restarts,
            iterations=self.config.kmeans_iterations,
            overlap_threshold=self.config.overlap_threshold,
            generator=self.generator,
        )
        self.state.set_masks(masks)


def _default_config(components: SDComponents) -> ConductorConfig:
    """``ConductorConfig()`` with the preset's choices (``PresetOptions.conductor_refines_masks``,
    ``conductor_merge_layers``)."""
    options = components.options
    config = ConductorConfig(merge_layers=options.conductor_merge_layers)
    if not options.conductor_refines_masks:
        config = dataclasses.replace(config, refine_updates=0)
    return config


def _guidance(
    paths: Sequence[SamplingPath],
    batch: int,
    trajectory: dict[int, torch.Tensor] | None,
    steps: frozenset[int],
    dtype: torch.dtype,
) -> Guidance:
    """The layout-alignment inputs: every path's conditional states (and the base text for the reference)."""
    positive = [p.positive.expand(batch, -1, -1, -1) for p in paths]
    names = path_adapter_names([p.adapter for p in paths], batch)
    if trajectory is not None:
        positive.append(paths[0].positive)
        names = [*(names or ["__base__"] * (len(paths) * batch)), "__base__"]
    return Guidance(torch.cat(positive).to(dtype), names, trajectory, steps)


def generate_conductor(
    components: SDComponents,
    request: SamplingRequest,
    *,
    layout: LayoutReference | None = None,
    config: ConductorConfig | None = None,
    inversions: InversionCache | None = None,
    observe: FeatureObserver | None = None,
) -> GenerationResult:
    """Generate images with several ED-LoRA concepts fused by Concept Conductor.

    Takes the requests of ``generate_regional`` (and refuses the same ones), plus:

    Args:
        layout: a reference whose layout the images follow (DDIM-inverted once per image+prompt, kept in
            ``inversions``); its masks, when given, are the concepts' initial masks.
        config: the method's knobs; None: ``ConductorConfig()`` with the preset's choices
            (``PresetOptions.conductor_refines_masks``, ``conductor_merge_layers``).
        inversions: a cache shared between calls (a worker keeps one).
        observe: diagnostic hook, called with each merge layer's fused output ``[paths, M, tokens, C]``.

    Returns:
        ``GenerationResult``: images, the final masks (``num_outputs · K`` images, image-major: image 0's concepts
        first; disjoint, each the region its concept was injected in at the last step), seeds.

    Raises:
        InvalidRequestError: the request does not fit the model, or a region or layout mask breaks a rule
            (``field`` names it).
        ModelLoadError: an adapter does not fit the loaded model.
        JobCanceledError: raised by ``request.on_step``; nothing is left on the components.
    """
    # 1. Check the request against the model; initial masks; the base path's text.
    request.check_fits(components)
    config = config or _default_config(components)
    placements, width, height = request.placements, request.width, request.height
    masks = initial_masks(components, placements, layout, width, height)
    base_parts = bind_for(components, request.prompt)
    unet, device, dtype = components.unet, components.device, components.dtype
    num_layers = len(cross_attention_layer_names(unet))
    paths_count, batch = len(placements) + 1, request.num_outputs
    rows = 2 * batch if request.use_cfg else batch

    with torch.no_grad():
        # 2. The layout reference's trajectory (plain UNet, before any adapter is attached), captioned with the
        # base path's text (its stand-ins may be learned embeddings, hence layer-wise states).
        trajectory = None
        if layout is not None:
            with layerwise_cross_attention(unet):
                trajectory = invert_reference(
                    components,
                    layout.image,
                    prompt=reference_caption(base_parts, placements),
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
        cfg=request.use_cfg,
        inject=config.inject,
        observer=observe,
    )
    layers = conductor_layers(
        unet,
        guidance_min_side=config.guidance_min_side,
        mask_max_side=config.mask_max_side,
        merge=config.merge_layers,
    )
    with torch.no_grad(), lora_scope(components.text_encoder, unet), multipath_attention(unet, state, layers):
        # 3. Adapters (text encoder and UNet at weight · alpha) and prompts of every path, laid out as one batch.
        base, concepts = encode_paths(components, request, num_layers=num_layers, concept_prompt=config.concept_prompt)
        paths: list[SamplingPath] = [base, *concepts]
        halves = [(p.negative, p.positive) if request.use_cfg else (p.positive,) for p in paths]
        state.adapter_names = path_adapter_names([p.adapter for p in paths], rows)
        guided = placements or trajectory is not None
        steps = config.guidance_steps(request.num_inference_steps) if guided else frozenset()
        loop = ConductorLoop(
            unet=unet,
            state=state,
            config=config,
            paths=paths_count,
            main_states=torch.cat([s.expand(batch, -1, -1, -1) for half in halves for s in half]).to(dtype),
            guidance_scale=request.guidance_scale,
            guidance=_guidance(paths, batch, trajectory, steps, dtype) if steps else None,
            refine_at=config.refinement_steps(request.num_inference_steps) if placements else frozenset(),
            generator=torch.Generator().manual_seed(request.seed),
        )
        # 4. Sample and decode.
        images = denoise(components, loop.predict, request, guide=loop.guide)
    logger.info(
        "conductor: %s, %d guided and %d refinement step(s); guidance layer %s, mask layer %s",
        request.summary,
        len(loop.guidance.steps) if loop.guidance else 0,
        len(loop.refine_at),
        layers.guidance,
        layers.mask,
    )
    final = state.masks.float().cpu()
    return GenerationResult(images=images, masks=_mask_images(final, components.vae_scale_factor), seeds=request.seeds)

"""Concept Conductor's knobs (``ConductorConfig``): step windows, guidance strength, k-means, prompts and layer roles.

Kept apart from the sampling loop (``core.ml.fusion.conductor``) so the evaluation and the benchmarks can name a
configuration without reading the loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import numpy as np

from core.ml.components import MergeLayers
from core.ml.fusion.multipath import GUIDANCE_MIN_SIDE, MASK_MAX_SIDE
from core.ml.prompts import PathPrompt


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

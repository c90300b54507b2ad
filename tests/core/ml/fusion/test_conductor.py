"""Concept Conductor on the tiny preset: the injection mechanism, masks, determinism, cost, cancel, clean-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch

from core.errors import InvalidRequestError, JobCanceledError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.fusion.conductor import ConductorConfig, LayoutReference, generate_conductor
from core.ml.fusion.inversion import InversionCache
from core.ml.fusion.kmeans import kmeans
from core.ml.fusion.multipath import conductor_layers
from core.ml.fusion.refinement import MaskTracks, refine_masks
from core.ml.fusion.regional import ConceptPlacement, GenerationResult
from core.progress import Progress
from tests.core.ml.conftest import square_image, square_mask

PROMPT = "a photo of <corgi> and <tabby> on the beach"
FAST = ConductorConfig(kmeans_restarts=4, kmeans_iterations=5, inversion_steps=4)


def _generate(components: SDComponents, placements: list[ConceptPlacement], **overrides: Any) -> GenerationResult:
    arguments: dict[str, Any] = {
        "prompt": PROMPT,
        "negative_prompt": "lowres",
        "placements": placements,
        "width": 64,
        "height": 64,
        "num_inference_steps": 3,
        "guidance_scale": 7.5,
        "seed": 5,
        "config": FAST,
        **overrides,
    }
    return generate_conductor(components, **arguments)


def _grid(mask: PIL.Image.Image) -> torch.Tensor:
    """A reported mask image back on the 8x8 latent grid (tokens of the tiny UNet's up-block layers)."""
    return torch.from_numpy(np.asarray(mask)[::8, ::8] > 0).reshape(-1)


def test_base_features_equal_each_concepts_inside_its_mask_at_every_merge_layer_and_step(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    # Boxes leave the middle quarter uncovered, where the base path must keep its own features.
    placements = [ConceptPlacement(corgi, (0.0, 0.0, 0.375, 1.0)), ConceptPlacement(tabby, (0.625, 0.0, 1.0, 1.0))]
    seen: list[tuple[str, torch.Tensor]] = []
    config = ConductorConfig(refine_updates=0, inversion_steps=4)
    steps = 3
    result = _generate(
        components, placements, num_inference_steps=steps, config=config, observe=lambda n, h: seen.append((n, h))
    )

    merge = conductor_layers(components.unet).merge
    assert len(seen) == steps * len(merge) and {n for n, _ in seen} == merge
    inside = [_grid(m) for m in result.masks]
    outside = ~(inside[0] | inside[1])
    assert inside[0].any() and inside[1].any() and outside.any() and not (inside[0] & inside[1]).any()
    for _, fused in seen:  # [paths, 2B, tokens, C]
        assert fused.shape[:3] == (3, 2, 64)
        assert torch.equal(fused[0][:, inside[0]], fused[1][:, inside[0]])
        assert torch.equal(fused[0][:, inside[1]], fused[2][:, inside[1]])
        assert not torch.allclose(fused[0][:, outside], fused[1][:, outside])
        assert not torch.allclose(fused[0][:, outside], fused[2][:, outside])
    unchanged()


def test_refined_masks_stay_disjoint_and_are_the_regions_injected_at_the_last_step(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    # Overlapping boxes: the later concept wins the overlap, then every step of 0..1 refines.
    placements = [ConceptPlacement(corgi, (0.0, 0.0, 0.75, 1.0)), ConceptPlacement(tabby, (0.5, 0.0, 1.0, 1.0))]
    config = ConductorConfig(refine_start=0.0, refine_end=1.0, refine_updates=4, kmeans_restarts=4)
    last: dict[str, torch.Tensor] = {}
    result = _generate(
        components, placements, num_inference_steps=4, num_outputs=2, config=config, observe=last.__setitem__
    )

    assert len(result.masks) == 4  # 2 images x 2 concepts, image-major
    for image in range(2):
        a, b = (_grid(m) for m in result.masks[2 * image : 2 * image + 2])
        assert a.any() and b.any() and not (a & b).any()
        for name, fused in last.items():  # fused at the last step: [paths, 2B, tokens, C], rows [uncond B, cond B]
            rows = [image, 2 + image]
            assert torch.equal(fused[0][rows][:, a], fused[1][rows][:, a]), name
            assert torch.equal(fused[0][rows][:, b], fused[2][rows][:, b]), name


def test_same_seed_same_pixels_with_guidance_and_refinement(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    placements = [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)]
    config = ConductorConfig(guidance_end=0.5, refine_start=0.0, refine_end=1.0, refine_updates=2, kmeans_restarts=4)
    first = _generate(components, placements, config=config, num_inference_steps=4)
    again = _generate(components, placements, config=config, num_inference_steps=4)
    other = _generate(components, placements, config=config, num_inference_steps=4, seed=6)
    assert [i.size for i in first.images] == [(64, 64)] and first.seeds == [5]
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    assert all(np.array_equal(np.asarray(m), np.asarray(n)) for m, n in zip(first.masks, again.masks, strict=True))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))
    unchanged()


def _count_calls(components: SDComponents) -> tuple[list[int], Callable[[], None]]:
    calls: list[int] = []
    handle = components.unet.register_forward_pre_hook(lambda _m, args: calls.append(int(args[0].shape[0])))
    return calls, handle.remove


def test_one_batched_unet_call_per_step_outside_the_guidance_window(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    placements = [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)]
    steps, config = 6, ConductorConfig(guidance_end=0.2, kmeans_restarts=2)
    assert config.guidance_steps(steps) == {0, 1}
    calls, remove = _count_calls(components)
    try:
        _generate(components, placements, num_inference_steps=steps, config=config, num_outputs=2)
    finally:
        remove()
    # Guided steps: a partial pass at batch paths x B, then the full pass at paths x 2B; every other step one pass.
    assert calls == [6, 12, 6, 12] + [12] * (steps - 2)


def test_layout_reference_is_inverted_once_and_its_masks_are_the_initial_masks(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    left, right = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
    left[:, :24], right[:, 40:] = 255, 255
    layout = LayoutReference(square_image((10, 200, 10), 9), [PIL.Image.fromarray(left), PIL.Image.fromarray(right)])
    placements = [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)]
    config = ConductorConfig(guidance_end=0.0, refine_updates=0, inversion_steps=4)
    cache = InversionCache()
    calls, remove = _count_calls(components)
    try:
        first = _generate(components, placements, layout=layout, inversions=cache, config=config)
        inverted = len(calls)
        second = _generate(components, placements, layout=layout, inversions=cache, config=config)
    finally:
        remove()
    assert len(cache) == 1 and inverted == 4 + 1 + 3  # inversion, one guided step's partial pass, 3 steps
    assert len(calls) - inverted == 1 + 3
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))
    assert np.array_equal(np.asarray(first.masks[0]) > 0, left > 0)
    assert np.array_equal(np.asarray(first.masks[1]) > 0, right > 0)
    with pytest.raises(InvalidRequestError) as info:
        _generate(components, placements, layout=LayoutReference(layout.image, [square_mask()]), config=config)
    assert info.value.field == "layout.masks"


def test_cancel_stops_within_the_step_and_leaves_nothing_behind(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    reports: list[Progress] = []

    def cancel(progress: Progress) -> None:
        reports.append(progress)
        raise JobCanceledError("canceled")

    calls, remove = _count_calls(components)
    try:
        with pytest.raises(JobCanceledError):
            _generate(
                components,
                [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)],
                num_inference_steps=5,
                config=ConductorConfig(guidance_end=-1.0, refine_updates=0),
                on_step=cancel,
            )
    finally:
        remove()
    assert reports == [Progress("sampling", 1, 5)] and len(calls) == 1
    unchanged()


def test_windows_are_fractions_of_the_trajectory() -> None:
    config = ConductorConfig()
    assert config.guidance_steps(200) == frozenset(range(61))
    assert config.refinement_steps(200) == frozenset(range(50, 81, 5))
    assert config.guidance_steps(50) == frozenset(range(16))
    assert min(config.refinement_steps(50)) == 13 and max(config.refinement_steps(50)) == 20


def test_kmeans_separates_clear_groups_and_refinement_follows_them() -> None:
    # Two objects on a 4x4 grid: each position's attention row points at its own object.
    objects = torch.zeros(16, dtype=torch.long)
    objects[[2, 3, 6, 7]] = 1
    objects[[10, 11, 14, 15]] = 2
    rows = torch.nn.functional.one_hot(objects, 3).float() @ torch.nn.functional.one_hot(objects, 3).float().T
    probs = rows / rows.sum(-1, keepdim=True)
    labels = kmeans(probs[None], 3, restarts=8, iterations=10, generator=torch.Generator().manual_seed(0))[0]
    assert all(len(set(labels[objects == o].tolist())) == 1 for o in range(3)) and len(set(labels.tolist())) == 3

    start = torch.zeros(2, 1, 4, 4)
    start[0, 0, 0:2, 1:4] = 1  # concept 1 roughly on object 1 (top right)
    start[1, 0, 2:4, 1:4] = 1  # concept 2 roughly on object 2 (bottom right)
    masks, _ = refine_masks(
        probs[None, None].expand(3, 1, 16, 16),
        start,
        MaskTracks.start(start, (4, 4)),
        (4, 4),
        cluster_counts=(3, 4),
        restarts=8,
        iterations=10,
        overlap_threshold=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(masks[0, 0].flatten().bool(), objects == 1)
    assert torch.equal(masks[1, 0].flatten().bool(), objects == 2)

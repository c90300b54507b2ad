"""Concept Conductor on the tiny preset: the injection mechanism, masks, determinism, cost, cancel, clean-up."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import UNet2DConditionModel

from core.errors import InvalidRequestError, JobCanceledError
from core.ml.components import PresetOptions, SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.attention import cross_attention_layer_names
from core.ml.fusion.conductor import ConductorConfig, LayoutReference, generate_conductor
from core.ml.fusion.inversion import InversionCache
from core.ml.fusion.kmeans import kmeans
from core.ml.fusion.multipath import (
    GuidanceStop,
    MultipathState,
    conductor_layers,
    multipath_attention,
    up_block_sides,
)
from core.ml.fusion.refinement import MaskTracks, refine_masks
from core.ml.fusion.regional import ConceptPlacement, GenerationResult, SamplingRequest
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
        **overrides,
    }
    method = {name: arguments.pop(name) for name in ("layout", "inversions", "observe") if name in arguments}
    config = arguments.pop("config", FAST)
    return generate_conductor(components, SamplingRequest.create(**arguments), config=config, **method)


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


def test_the_preset_chooses_the_merge_layers_unless_a_config_is_given(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    placements = [ConceptPlacement(corgi, (0.0, 0.0, 0.5, 1.0)), ConceptPlacement(tabby, (0.5, 0.0, 1.0, 1.0))]
    everywhere = dataclasses.replace(components, options=PresetOptions(conductor_merge_layers="all"))
    seen: dict[str, set[str]] = {"preset": set(), "explicit": set()}
    _generate(everywhere, placements, num_inference_steps=2, config=None, observe=lambda n, _h: seen["preset"].add(n))
    explicit = ConductorConfig(refine_updates=0, kmeans_restarts=2)
    _generate(
        everywhere, placements, num_inference_steps=2, config=explicit, observe=lambda n, _h: seen["explicit"].add(n)
    )

    assert seen["preset"] == set(conductor_layers(components.unet, merge="all").merge)
    assert any(n.startswith("down_blocks.") for n in seen["preset"])
    assert seen["explicit"] == set(conductor_layers(components.unet).merge)


def test_a_preset_that_turns_refinement_off_keeps_the_requested_regions(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    placements = [ConceptPlacement(corgi, (0.0, 0.0, 0.5, 1.0)), ConceptPlacement(tabby, (0.5, 0.0, 1.0, 1.0))]
    steps = {"num_inference_steps": 6, "config": None}  # the default config: 7 refinements over 0.25..0.40
    refining = _generate(components, placements, **steps)
    fixed_options = PresetOptions(conductor_refines_masks=False)
    fixed = _generate(dataclasses.replace(components, options=fixed_options), placements, **steps)

    left, right = torch.zeros(8, 8, dtype=torch.bool), torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4], right[:, 4:] = True, True
    assert [_grid(m).tolist() for m in fixed.masks] == [left.reshape(-1).tolist(), right.reshape(-1).tolist()]
    assert [_grid(m).tolist() for m in refining.masks] != [_grid(m).tolist() for m in fixed.masks]


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


def _zeroed(weights: EDLoRAWeights) -> EDLoRAWeights:
    """The same concept with both LoRAs zero (its learned embeddings kept)."""
    zero = {k: torch.zeros_like(v) for k, v in weights.unet_lora.items()}
    return dataclasses.replace(
        weights,
        unet_lora=zero,
        text_encoder_lora={k: torch.zeros_like(v) for k, v in weights.text_encoder_lora.items()},
    )


def test_lora_weight_scales_the_unet_lora_as_well_as_the_text_encoders(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    # Weight 0 must switch a concept's whole LoRA off: the same pixels as an adapter whose LoRA is zero.
    config = ConductorConfig(guidance_end=0.4, refine_start=0.0, refine_end=1.0, refine_updates=2, kmeans_restarts=2)
    off = _generate(components, [ConceptPlacement(corgi, None, 0.0), ConceptPlacement(tabby, None)], config=config)
    zero = _generate(
        components, [ConceptPlacement(_zeroed(corgi), None), ConceptPlacement(tabby, None)], config=config
    )
    on = _generate(components, [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)], config=config)
    assert np.array_equal(np.asarray(off.images[0]), np.asarray(zero.images[0]))
    assert not np.array_equal(np.asarray(on.images[0]), np.asarray(off.images[0]))


def _roles(unet: UNet2DConditionModel) -> tuple[str, str, int]:
    layers = conductor_layers(unet)

    def short(name: str) -> str:
        return name.split(".transformer_blocks")[0]

    return short(layers.guidance), short(layers.mask), len(layers.merge)


def _small_unet(**config: Any) -> UNet2DConditionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet2DConditionModel(cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4, **config)


def test_layer_roles_are_chosen_by_resolution() -> None:
    # SD 1.5's block layout (diffusers' defaults) at toy width: Concept Conductor's own layers.
    sd15 = _small_unet(sample_size=64, block_out_channels=(4, 4, 4, 4))
    assert list(up_block_sides(sd15).values()) == [8, 16, 32, 64]
    assert _roles(sd15) == ("up_blocks.1.attentions.0", "up_blocks.2.attentions.2", 18)
    # The new shapes base model: cross-attention on every level of an 8x8 latent, up levels 2, 4, 8.
    full_grid = _small_unet(
        sample_size=8,
        block_out_channels=(4, 8, 8),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
    )
    assert list(up_block_sides(full_grid).values()) == [2, 4, 8]
    assert _roles(full_grid) == ("up_blocks.2.attentions.0", "up_blocks.2.attentions.1", 12)
    # The shipped shapes layout (attention at 2x2 and 4x4 only): its finest attention level, 4x4.
    shipped = _small_unet(
        sample_size=8,
        block_out_channels=(4, 8, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )
    assert _roles(shipped) == ("up_blocks.1.attentions.0", "up_blocks.1.attentions.1", 8)
    # Thresholds move the choice (a 64-wide mask layer when allowed).
    assert conductor_layers(sd15, mask_max_side=64).mask.startswith("up_blocks.3.attentions.2.")
    assert conductor_layers(sd15, guidance_min_side=32).guidance.startswith("up_blocks.2.attentions.0.")
    # merge="all" injects in every attention layer of the UNet: down, mid and up blocks.
    everywhere = conductor_layers(full_grid, merge="all").merge
    assert everywhere == frozenset(full_grid.attn_processors) and len(everywhere) == 12 + 6 + 2
    assert conductor_layers(full_grid, merge="all").guidance == conductor_layers(full_grid).guidance


def test_full_grid_model_guides_and_clusters_on_the_8x8_grid() -> None:
    unet = _small_unet(
        sample_size=8,
        block_out_channels=(4, 8, 8),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
    ).eval()
    layers = len(cross_attention_layer_names(unet))
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, layers, 6, 8, generator=generator)
    state = MultipathState(paths=1, adapter_names=None, masks=torch.zeros(0, 2, 8, 8), cfg=False)
    with torch.no_grad(), multipath_attention(unet, state):
        state.guidance = True
        with pytest.raises(GuidanceStop):
            unet(sample, 10, encoder_hidden_states=context)
        state.guidance, state.capture_probs = False, True
        unet(sample, 10, encoder_hidden_states=context)
    assert state.keys is not None and state.keys.shape[:2] == (2, 64)
    assert state.probs is not None and state.probs.shape == (1, 2, 64, 64)


def test_learned_embedding_stand_ins_reach_the_base_path_and_the_layout_inversion(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    embedded = dataclasses.replace(components, options=PresetOptions(base_path_concept_words="learned_embeddings"))
    layout = LayoutReference(square_image((10, 200, 10), 9))
    placements = [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)]
    config = ConductorConfig(guidance_end=0.4, refine_updates=0, inversion_steps=4)
    cache = InversionCache()
    by_word = _generate(components, placements, layout=layout, inversions=cache, config=config)
    by_embedding = _generate(embedded, placements, layout=layout, inversions=cache, config=config)
    again = _generate(embedded, placements, layout=layout, inversions=cache, config=config)
    assert len(cache) == 2  # the two captions differ, so do their inversions; the repeat is a cache hit
    assert np.array_equal(np.asarray(by_embedding.images[0]), np.asarray(again.images[0]))
    assert not np.array_equal(np.asarray(by_word.images[0]), np.asarray(by_embedding.images[0]))


def test_concept_prompt_choices_change_the_concept_paths(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    assert ConductorConfig().concept_prompt == "every_slot"
    placements = [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)]
    images = {
        mode: np.asarray(
            _generate(
                components, placements, config=dataclasses.replace(FAST, concept_prompt=mode, refine_updates=0)
            ).images[0]
        )
        for mode in ("full", "own_clause", "every_slot")
    }
    assert not np.array_equal(images["full"], images["every_slot"])
    assert not np.array_equal(images["own_clause"], images["every_slot"])
    with pytest.raises(ValueError, match="concept_prompt"):
        ConductorConfig(concept_prompt="whatever")  # type: ignore[arg-type]

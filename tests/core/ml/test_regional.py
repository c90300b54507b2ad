"""Regional multi-concept generation on the tiny preset."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from core.errors import InvalidRequestError, JobCanceledError, UnknownConceptError
from core.ml.components import PresetOptions, SDComponents
from core.ml.edlora.adapter import EDLoRAWeights, load_adapter, save_adapter
from core.ml.edlora.attention import cross_attention_layer_names
from core.ml.edlora.embeddings import encode_layerwise
from core.ml.edlora.lora import activate_lora, lora_scope
from core.ml.fusion.regional import (
    ConceptPlacement,
    GenerationResult,
    SamplingRequest,
    encode_regional_prompts,
    generate_regional,
)
from core.ml.fusion.regional_attention import RegionalAttnProcessor, RegionalState
from core.ml.fusion.stacked import generate_stacked
from core.ml.prompts import ConceptSlot, PromptPart
from core.ml.regions import masks_at, region_masks
from core.progress import Progress
from tests.core.ml.conftest import sampling_request

PROMPT = "a photo of <corgi> and <tabby> on the beach"


def _generate(components: SDComponents, placements: list[ConceptPlacement], **overrides: Any) -> GenerationResult:
    arguments: dict[str, Any] = {
        "prompt": PROMPT,
        "negative_prompt": "lowres, blurry",
        "placements": placements,
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
        "guidance_scale": 7.5,
        "seed": 7,
        **overrides,
    }
    return generate_regional(components, SamplingRequest.create(**arguments))


def _pixels(image: PIL.Image.Image) -> np.ndarray[Any, Any]:
    return np.asarray(image)


def test_two_concepts_sizes_determinism_and_progress(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    placements = [ConceptPlacement(corgi, (0.0, 0.0, 0.5, 1.0)), ConceptPlacement(tabby, (0.5, 0.0, 1.0, 1.0))]
    reports: list[Progress] = []
    result = _generate(components, placements, width=80, num_inference_steps=3, on_step=reports.append)
    assert reports == [Progress("sampling", i, 3) for i in (1, 2, 3)]
    assert [i.size for i in result.images] == [(80, 64)] and result.images[0].mode == "RGB"
    assert [m.size for m in result.masks] == [(80, 64)] * 2 and result.seeds == [7]
    again = _generate(components, placements, width=80, num_inference_steps=3)
    assert np.array_equal(_pixels(again.images[0]), _pixels(result.images[0]))
    other = _generate(components, placements, width=80, num_inference_steps=3, seed=8)
    assert not np.array_equal(_pixels(other.images[0]), _pixels(result.images[0]))
    unchanged()


def test_outputs_use_consecutive_seeds(components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights) -> None:
    placements = [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)]
    result = _generate(components, placements, num_outputs=2)
    assert result.seeds == [7, 8] and len(result.images) == 2
    assert not np.array_equal(_pixels(result.images[0]), _pixels(result.images[1]))
    second = _generate(components, placements, seed=8)
    assert np.allclose(_pixels(second.images[0]), _pixels(result.images[1]), atol=1)


def test_concepts_change_the_image(components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights) -> None:
    with_concepts = _generate(components, [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)])
    base_only = _generate(components, [], prompt="a photo of dog and cat on the beach")
    assert not np.array_equal(_pixels(with_concepts.images[0]), _pixels(base_only.images[0]))
    assert base_only.masks == []


def test_saved_adapters_give_identical_pixels(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, tmp_path: Path
) -> None:
    in_memory = _generate(components, [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)])
    save_adapter(corgi, tmp_path / "corgi.safetensors")
    save_adapter(tabby, tmp_path / "tabby.safetensors")
    loaded = [load_adapter(tmp_path / "corgi.safetensors"), load_adapter(tmp_path / "tabby.safetensors")]
    from_files = _generate(components, [ConceptPlacement(w, None) for w in loaded])
    assert np.array_equal(_pixels(from_files.images[0]), _pixels(in_memory.images[0]))


def test_result_masks_are_the_requested_boxes(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    box = (0.25, 0.5, 0.75, 1.0)
    result = _generate(components, [ConceptPlacement(corgi, box), ConceptPlacement(tabby, None)])
    expected = np.zeros((64, 64), dtype=np.uint8)
    expected[32:64, 16:48] = 255
    assert np.array_equal(_pixels(result.masks[0]), expected)
    assert _pixels(result.masks[1]).min() == 255  # the only automatic placement gets the whole image


def test_plain_text_to_image_without_placements(components: SDComponents, unchanged: Callable[[], None]) -> None:
    result = _generate(components, [], prompt="a photo of a dog", guidance_scale=1.0, height=72)
    assert [i.size for i in result.images] == [(64, 72)]
    unchanged()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"width": 100}, "width"),
        ({"height": 2048}, "height"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": 31.0}, "guidance_scale"),
        ({"num_outputs": 9}, "num_outputs"),
        ({"prompt": "a photo of <corgi>"}, "prompt"),
    ],
)
def test_invalid_arguments_name_the_field(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        _generate(components, [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)], **overrides)
    assert info.value.field == field


def test_unknown_concept_in_prompt(components: SDComponents, corgi: EDLoRAWeights) -> None:
    with pytest.raises(UnknownConceptError) as info:
        _generate(components, [ConceptPlacement(corgi, None)], prompt="<corgi> meets <rex>")
    assert info.value.field == "prompt"


def test_adapter_from_another_base_model_is_refused(components: SDComponents, corgi: EDLoRAWeights) -> None:
    foreign = EDLoRAWeights(**{**vars(corgi), "base_model_id": "sd15@0123456789ab"})
    with pytest.raises(InvalidRequestError) as info:
        _generate(components, [ConceptPlacement(foreign, None)], prompt="a <corgi>")
    assert info.value.field == "concepts[0]"


def test_cancel_mid_sampling_leaves_components(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    def cancel_at_step_1(progress: Progress) -> None:
        if progress.step == 1:
            raise JobCanceledError("canceled by the client")

    with pytest.raises(JobCanceledError):
        _generate(components, [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)], on_step=cancel_at_step_1)
    unchanged()


def _zeroed(weights: EDLoRAWeights) -> EDLoRAWeights:
    """The same concept with both LoRAs zero (its learned embeddings kept)."""
    zero = {k: torch.zeros_like(v) for k, v in weights.unet_lora.items()}
    return dataclasses.replace(
        weights,
        unet_lora=zero,
        text_encoder_lora={k: torch.zeros_like(v) for k, v in weights.text_encoder_lora.items()},
    )


def test_one_unet_pass_per_step_at_batch_2n(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    calls: list[int] = []
    handle = components.unet.register_forward_pre_hook(lambda _m, args: calls.append(int(args[0].shape[0])))
    try:
        _generate(
            components,
            [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)],
            num_outputs=2,
            num_inference_steps=3,
        )
        _generate(components, [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)], guidance_scale=1.0)
    finally:
        handle.remove()
    assert calls == [4, 4, 4, 1, 1]


def test_a_region_covering_the_image_is_plain_single_concept_edlora_sampling(
    components: SDComponents, corgi: EDLoRAWeights
) -> None:
    # Inside a region every layer sees exactly the concept's own ED-LoRA model, in both halves of classifier-free
    # guidance: with one region over the whole image nothing else is left.
    arguments: dict[str, Any] = {"prompt": "a photo of <corgi> on the beach", "guidance_scale": 3.0, "seed": 3}
    regional = _generate(components, [ConceptPlacement(corgi, (0.0, 0.0, 1.0, 1.0), 0.9)], **arguments)
    stacked = generate_stacked(
        components,
        SamplingRequest.create(
            negative_prompt="lowres, blurry",  # _generate's
            placements=[ConceptPlacement(corgi, None, 0.9)],
            width=64,
            height=64,
            num_inference_steps=2,
            **arguments,
        ),
    )
    plain = _generate(components, [], **{**arguments, "prompt": "a photo of dog on the beach"})
    assert np.array_equal(_pixels(regional.images[0]), _pixels(stacked.images[0]))
    assert not np.array_equal(_pixels(regional.images[0]), _pixels(plain.images[0]))


def test_cross_attention_composes_region_prompts_and_region_loras(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    unet, batch = components.unet, 2
    names = cross_attention_layer_names(unet)
    index = len(names) - 1  # the last up-block cross-attention, on the full 8x8 grid
    attn = unet.get_submodule(names[index].removesuffix(".processor"))
    placements = [
        ConceptPlacement(corgi, (0.0, 0.0, 0.375, 1.0)),
        ConceptPlacement(tabby, (0.625, 0.0, 1.0, 1.0), 1.2),
    ]
    masks = region_masks([p.region for p in placements], width=64, height=64, scale_factor=8)[0][:, 0]
    hidden = torch.randn(2 * batch, 64, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))
    plain = AttnProcessor2_0()
    with torch.no_grad(), lora_scope(components.text_encoder, unet):
        prompts = encode_regional_prompts(
            components, sampling_request(PROMPT, placements, "blurry"), num_layers=len(names)
        )
        assert prompts.regions is not None
        state = RegionalState(prompts.adapters, masks, prompts.regions, cfg=True, negatives=prompts.negative_regions)
        context = torch.cat([prompts.negative.expand(batch, -1, -1, -1), prompts.positive.expand(batch, -1, -1, -1)])
        composed = RegionalAttnProcessor(state, layer_index=index)(attn, hidden, context)
        base = plain(attn, hidden, context[:, index])  # adapters disabled: the plain layer on the global texts
        assert prompts.negative_regions is not None
        own, own_negative = [], []
        for k, (adapter, placement) in enumerate(zip(prompts.adapters, placements, strict=True)):
            activate_lora(unet, adapter, placement.weight * placement.weights.alpha)
            own.append(plain(attn, hidden[batch:], prompts.regions[k : k + 1, index].expand(batch, -1, -1)))
            negative = prompts.negative_regions[k : k + 1, index].expand(batch, -1, -1)
            own_negative.append(plain(attn, hidden[:batch], negative))
        activate_lora(unet, None)
    inside = masks_at(masks, 64)  # [2, 64]
    outside = ~inside.any(dim=0)
    assert inside[0].any() and inside[1].any() and outside.any()
    # Outside every region: the plain layer, on the global prompt (conditional) and negative prompt (unconditional).
    assert torch.allclose(composed[:, outside], base[:, outside], atol=1e-6)
    # Inside region k: concept k's own LoRA'd layer, on its region prompt (conditional rows) and on the negative prompt
    # encoded with its text-encoder LoRA (unconditional rows), so guidance does not amplify the LoRA itself.
    for k in range(2):
        assert torch.allclose(composed[batch:, inside[k]], own[k][:, inside[k]], atol=1e-6)
        assert torch.allclose(composed[:batch, inside[k]], own_negative[k][:, inside[k]], atol=1e-6)
        assert not torch.allclose(composed[batch:, inside[k]], base[batch:, inside[k]], atol=1e-4)
        assert not torch.allclose(composed[:batch, inside[k]], base[:batch, inside[k]], atol=1e-4)


def test_overlapping_regions_average() -> None:
    masks = torch.zeros(2, 4, 4)
    masks[0, :, :3] = 1
    masks[1, :, 2:] = 1
    state = RegionalState(["a", "b"], masks, None, cfg=False)
    weights, present = state.weights_for(16)
    grid = weights[..., 0].view(2, 4, 4)
    assert present == [True, True]
    assert torch.equal(grid[:, 0], torch.tensor([[1.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.5, 1.0]]))
    coarse, _ = state.weights_for(4)  # 2x2: a cell is in a region when half of it is
    assert torch.equal(coarse[..., 0], torch.tensor([[1.0, 0.5, 1.0, 0.5], [0.0, 0.5, 0.0, 0.5]]))


def test_region_prompts_are_the_clauses_naming_each_concept_or_the_prompt_with_it_in_every_slot(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    placements = [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None, 1.5)]
    embedded = dataclasses.replace(components, options=PresetOptions(base_path_concept_words="learned_embeddings"))
    layers = len(cross_attention_layer_names(components.unet))
    embeddings = {"corgi": corgi.token_embeddings, "tabby": tabby.token_embeddings}

    def encode(parts: list[PromptPart]) -> torch.Tensor:
        return encode_layerwise(components.tokenizer, components.text_encoder, [parts], embeddings, layers)

    with torch.no_grad(), lora_scope(components.text_encoder, components.unet):
        by_word = encode_regional_prompts(components, sampling_request(PROMPT, placements), num_layers=layers)
        by_embedding = encode_regional_prompts(embedded, sampling_request(PROMPT, placements), num_layers=layers)
        global_words = encode(["a photo of dog and cat on the beach"])
        global_embeddings = encode(
            ["a photo of ", ConceptSlot("corgi"), " and ", ConceptSlot("tabby"), " on the beach"]
        )
        activate_lora(components.text_encoder, "tessera_concept_1", 1.5 * tabby.alpha)
        tabby_region = encode([ConceptSlot("tabby"), " on the beach"])
        tabby_everywhere = encode(
            ["a photo of ", ConceptSlot("tabby"), " and ", ConceptSlot("tabby"), " on the beach"]
        )
        activate_lora(components.text_encoder, None)
        every_slot = dataclasses.replace(components, options=PresetOptions(regional_region_prompt="every_slot"))
        by_slot = encode_regional_prompts(every_slot, sampling_request(PROMPT, placements), num_layers=layers)
    assert torch.equal(by_word.positive, global_words)
    assert torch.equal(by_embedding.positive, global_embeddings)
    assert by_word.regions is not None and torch.equal(by_word.regions[1], tabby_region[0])
    # The shapes preset's choice: each region reads the whole prompt with its concept in every slot.
    assert by_slot.regions is not None and torch.equal(by_slot.regions[1], tabby_everywhere[0])
    assert torch.equal(by_slot.positive, global_words)


def test_lora_weight_scales_both_loras(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    boxes = [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]
    off = _generate(components, [ConceptPlacement(corgi, boxes[0], 0.0), ConceptPlacement(tabby, boxes[1])])
    zero = _generate(components, [ConceptPlacement(_zeroed(corgi), boxes[0]), ConceptPlacement(tabby, boxes[1])])
    on = _generate(components, [ConceptPlacement(corgi, boxes[0]), ConceptPlacement(tabby, boxes[1])])
    assert np.array_equal(_pixels(off.images[0]), _pixels(zero.images[0]))
    assert not np.array_equal(_pixels(on.images[0]), _pixels(off.images[0]))
    unchanged()

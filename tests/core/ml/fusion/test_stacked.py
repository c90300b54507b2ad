"""Naive multi-LoRA stacking on the tiny preset: both adapters act at once, and nothing is left behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from peft.tuners.lora import LoraLayer

from core.errors import InvalidRequestError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.fusion.regional import ConceptPlacement, GenerationResult, SamplingRequest
from core.ml.fusion.stacked import generate_stacked
from core.progress import Progress

PROMPT = "a photo of <corgi> and <tabby>"


def _generate(components: SDComponents, placements: list[ConceptPlacement], **overrides: Any) -> GenerationResult:
    arguments: dict[str, Any] = {
        "prompt": PROMPT,
        "negative_prompt": "blurry",
        "placements": placements,
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
        "seed": 3,
        **overrides,
    }
    return generate_stacked(components, SamplingRequest.create(**arguments))


def _pixels(result: GenerationResult) -> np.ndarray[Any, Any]:
    return np.stack([np.asarray(image) for image in result.images])


def test_every_adapter_is_active_at_its_own_scale_in_every_lora_layer(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    seen: list[tuple[set[str], set[tuple[str, float]]]] = []

    def inspect(_: Progress) -> None:
        for model in (components.unet, components.text_encoder):
            for module in model.modules():
                if isinstance(module, LoraLayer):
                    scales = {(name, round(float(module.scaling[name]), 6)) for name in module.active_adapters}
                    seen.append((set(module.active_adapters), scales))

    placements = [ConceptPlacement(corgi, None, 0.5), ConceptPlacement(tabby, None, 1.25)]
    result = _generate(components, placements, on_step=inspect, num_outputs=2)

    assert [i.size for i in result.images] == [(64, 64)] * 2 and result.seeds == [3, 4] and result.masks == []
    assert seen and all(active == {"tessera_concept_0", "tessera_concept_1"} for active, _ in seen)
    assert all(scales == {("tessera_concept_0", 0.5), ("tessera_concept_1", 1.25)} for _, scales in seen)
    unchanged()


def test_each_adapter_changes_the_image_and_the_result_is_reproducible(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    both = _pixels(_generate(components, [ConceptPlacement(corgi, None, 1.0), ConceptPlacement(tabby, None, 1.0)]))
    no_corgi = _pixels(_generate(components, [ConceptPlacement(corgi, None, 0.0), ConceptPlacement(tabby, None, 1.0)]))
    no_tabby = _pixels(_generate(components, [ConceptPlacement(corgi, None, 1.0), ConceptPlacement(tabby, None, 0.0)]))
    again = _pixels(_generate(components, [ConceptPlacement(corgi, None, 1.0), ConceptPlacement(tabby, None, 1.0)]))

    assert not np.array_equal(both, no_corgi) and not np.array_equal(both, no_tabby)
    assert np.array_equal(both, again)
    unchanged()


def test_a_single_concept_is_plain_edlora_sampling(
    components: SDComponents, corgi: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    result = _generate(components, [ConceptPlacement(corgi, (0.0, 0.0, 0.5, 1.0))], prompt="a photo of <corgi>")
    assert len(result.images) == 1 and result.masks == []
    unchanged()


def test_requests_are_checked_like_regional(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        _generate(components, [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)], prompt="a <corgi>")
    assert info.value.field == "prompt"

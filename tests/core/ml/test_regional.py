"""Regional multi-concept generation on the tiny preset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest

from core.errors import InvalidRequestError, JobCanceledError, UnknownConceptError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights, load_adapter, save_adapter
from core.ml.fusion.regional import ConceptPlacement, GenerationResult, generate_regional
from core.progress import Progress

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
    return generate_regional(components, **arguments)


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

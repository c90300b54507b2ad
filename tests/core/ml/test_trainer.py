"""ED-LoRA training on the tiny preset: progress, cancellation, determinism, and untouched shared components."""

from __future__ import annotations

import math
from collections.abc import Callable

import PIL.Image
import pytest
import torch

from core.errors import InvalidRequestError, JobCanceledError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights, adapter_to_bytes
from core.ml.edlora.embeddings import init_concept_embeddings
from core.ml.edlora.trainer import train_edlora
from core.progress import Progress
from core.training_options import EDLoRAConfig


def test_training_reports_every_step_and_learns_only_adapter_weights(
    components: SDComponents,
    images: list[PIL.Image.Image],
    fast_config: EDLoRAConfig,
    unchanged: Callable[[], None],
) -> None:
    reports: list[Progress] = []
    weights = train_edlora(
        components,
        images,
        concept_name="corgi",
        class_word="dog",
        config=fast_config,
        captions=["a photo of <concept> on the beach", "a <corgi> in the style of a painting"],
        on_step=reports.append,
    )
    assert reports == [Progress("training", 1, 2), Progress("training", 2, 2)]
    assert math.isfinite(weights.training_options["final_loss"])
    assert weights.token_embeddings.shape == (2, 4, 32) and weights.num_layers == 4
    # Only LoRA factors are saved: text encoder q/k/v/out of 2 layers, UNet q/k/v/out of 2 attentions x 4 blocks.
    assert len(weights.text_encoder_lora) == 2 * 4 * 2 and len(weights.unet_lora) == 4 * 2 * 4 * 2
    assert all(".lora_A." in k or ".lora_B." in k for k in [*weights.text_encoder_lora, *weights.unet_lora])
    # B starts at zero: a non-zero B means the LoRA trained; the embeddings moved away from their init.
    assert all(v.abs().sum() > 0 for k, v in weights.unet_lora.items() if ".lora_B." in k)
    init = init_concept_embeddings(
        components.tokenizer, components.text_encoder, "dog", 4, torch.Generator().manual_seed(fast_config.seed)
    )
    assert not torch.allclose(weights.token_embeddings, init)
    unchanged()


def test_training_is_deterministic(
    components: SDComponents, images: list[PIL.Image.Image], fast_config: EDLoRAConfig, corgi: EDLoRAWeights
) -> None:
    again = train_edlora(components, images, concept_name="corgi", class_word="dog", config=fast_config)
    assert adapter_to_bytes(again) == adapter_to_bytes(corgi)


def test_masked_training_records_it(tabby: EDLoRAWeights) -> None:
    assert tabby.training_options["masked_loss"] is True
    assert math.isfinite(tabby.training_options["final_loss"])


def test_cancel_at_step_1_propagates_and_leaves_components(
    components: SDComponents,
    images: list[PIL.Image.Image],
    fast_config: EDLoRAConfig,
    unchanged: Callable[[], None],
) -> None:
    calls: list[int] = []

    def cancel_at_step_1(progress: Progress) -> None:
        calls.append(progress.step)
        if progress.step == 1:
            raise JobCanceledError("canceled by the client")

    with pytest.raises(JobCanceledError):
        train_edlora(
            components, images, concept_name="corgi", class_word="dog", config=fast_config, on_step=cancel_at_step_1
        )
    assert calls == [1]
    unchanged()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"concept_name": "Bad Name"}, "concept.name"),
        ({"class_word": "two words"}, "concept.class_word"),
        ({"masks": []}, "masks"),
        ({"captions": ["a photo of a dog", "a <concept>"]}, "captions[0]"),
        ({"masks": [PIL.Image.new("L", (64, 64)), PIL.Image.new("L", (64, 64), 255)]}, "masks[0]"),
    ],
)
def test_invalid_inputs_name_the_field(
    components: SDComponents,
    images: list[PIL.Image.Image],
    fast_config: EDLoRAConfig,
    kwargs: dict[str, object],
    field: str,
) -> None:
    arguments: dict[str, object] = {"concept_name": "corgi", "class_word": "dog", "config": fast_config, **kwargs}
    with pytest.raises(InvalidRequestError) as info:
        train_edlora(components, images, **arguments)  # type: ignore[arg-type]
    assert info.value.field == field

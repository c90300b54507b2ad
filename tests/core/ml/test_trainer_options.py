"""The trainer's speed and memory choices train the same thing: gradient checkpointing, bf16 autocast, channels-last,
the fused optimizer and SDPA in uncaptured layers (tiny preset, a few steps)."""

from __future__ import annotations

import copy

import PIL.Image
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from pydantic import ValidationError

import core.ml.edlora.trainer as trainer
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.trainer import _prefer_sdpa, autocast_dtype, train_edlora
from core.training_options import EDLoRAConfig
from tests.core.ml.conftest import square_mask


def _train(components: SDComponents, images: list[PIL.Image.Image], config: EDLoRAConfig) -> EDLoRAWeights:
    # Masks and the separation loss on: the captured layers (explicit attention) are part of every comparison.
    return train_edlora(
        components, images, concept_name="corgi", class_word="dog", config=config, masks=[square_mask()] * 2
    )


def _max_difference(a: EDLoRAWeights, b: EDLoRAWeights) -> float:
    tensors = [(a.token_embeddings, b.token_embeddings)]
    tensors += [(a.unet_lora[k], b.unet_lora[k]) for k in a.unet_lora]
    tensors += [(a.text_encoder_lora[k], b.text_encoder_lora[k]) for k in a.text_encoder_lora]
    return max(float((x - y).abs().max()) for x, y in tensors)


@pytest.fixture(scope="module")
def reference(components: SDComponents, images: list[PIL.Image.Image], fast_config: EDLoRAConfig) -> EDLoRAWeights:
    return _train(components, images, fast_config.model_copy(update={"max_train_steps": 3}))


def test_gradient_checkpointing_trains_the_same_adapter(
    components: SDComponents, images: list[PIL.Image.Image], fast_config: EDLoRAConfig, reference: EDLoRAWeights
) -> None:
    config = fast_config.model_copy(update={"max_train_steps": 3, "gradient_checkpointing": True})

    weights = _train(components, images, config)

    # Recomputing the activations is the same arithmetic, so the same loss and weights (to rounding).
    assert weights.training_options["final_loss"] == pytest.approx(reference.training_options["final_loss"], rel=1e-6)
    assert _max_difference(weights, reference) < 1e-6
    assert weights.training_options["gradient_checkpointing"] is True


def test_bf16_autocast_gives_the_same_loss_within_bf16_precision(
    components: SDComponents, images: list[PIL.Image.Image], fast_config: EDLoRAConfig
) -> None:
    config = fast_config.model_copy(update={"max_train_steps": 1})

    exact = _train(components, images, config)
    mixed = _train(components, images, config.model_copy(update={"mixed_precision": "bf16"}))

    # Step 1's loss is computed before any update: the same batch, the model passes in bfloat16 (8-bit mantissa).
    assert mixed.training_options["final_loss"] == pytest.approx(exact.training_options["final_loss"], rel=2e-2)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in mixed.unet_lora.values())


def test_channels_last_trains_the_same_adapter(
    components: SDComponents,
    images: list[PIL.Image.Image],
    fast_config: EDLoRAConfig,
    reference: EDLoRAWeights,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Channels-last is used on CUDA only; forcing it here runs the same code path on CPU.
    monkeypatch.setattr(trainer, "_CHANNELS_LAST_DEVICES", frozenset({"cpu"}))

    weights = _train(components, images, fast_config.model_copy(update={"max_train_steps": 3}))

    assert weights.training_options["final_loss"] == pytest.approx(reference.training_options["final_loss"], rel=1e-4)
    assert _max_difference(weights, reference) < 1e-3


def test_the_fused_optimizer_matches_the_per_tensor_loop(
    components: SDComponents,
    images: list[PIL.Image.Image],
    fast_config: EDLoRAConfig,
    reference: EDLoRAWeights,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trainer, "_FUSED_ADAMW_DEVICES", frozenset())

    weights = _train(components, images, fast_config.model_copy(update={"max_train_steps": 3}))

    assert weights.training_options["final_loss"] == pytest.approx(reference.training_options["final_loss"], rel=1e-5)
    assert _max_difference(weights, reference) < 1e-4


def test_autocast_is_off_on_cpu_unless_asked_for(components: SDComponents) -> None:
    assert components.device.type == "cpu"
    assert autocast_dtype(EDLoRAConfig(), components) is None
    assert autocast_dtype(EDLoRAConfig(mixed_precision="no"), components) is None
    assert autocast_dtype(EDLoRAConfig(mixed_precision="bf16"), components) is torch.bfloat16


def test_plain_attention_layers_get_sdpa_and_others_are_kept(components: SDComponents) -> None:
    unet = copy.deepcopy(components.unet)
    names = list(unet.attn_processors)
    kept = AttnProcessor2_0()
    unet.set_attn_processor({name: kept if i == 0 else AttnProcessor() for i, name in enumerate(names)})

    _prefer_sdpa(unet)

    processors = unet.attn_processors
    assert processors[names[0]] is kept
    assert all(type(processors[name]) is AttnProcessor2_0 for name in names)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"gradient_checkpointing": "sometimes"}, "gradient_checkpointing"),
    ],
)
def test_speed_options_are_validated(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        EDLoRAConfig.model_validate(options)
    assert info.value.errors()[0]["loc"] == (field,)


def test_speed_options_default_to_auto_precision_and_no_checkpointing() -> None:
    config = EDLoRAConfig()
    assert (config.mixed_precision, config.gradient_checkpointing) == ("auto", False)

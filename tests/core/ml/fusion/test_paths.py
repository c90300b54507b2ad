"""The texts fusion paths read: the preset's stand-in choice, concept-path prompts, and adapter scaling."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer

from core.errors import ModelLoadError
from core.ml.components import PresetOptions, SDComponents, read_preset_options
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.attention import cross_attention_layer_names
from core.ml.edlora.embeddings import encode_layerwise, tokenize_parts
from core.ml.edlora.lora import activate_lora, lora_scope
from core.ml.fusion.paths import PathPrompt, encode_paths
from core.ml.fusion.regional import ConceptPlacement
from core.ml.prompts import ConceptSlot, PromptPart
from tests.core.ml.conftest import sampling_request

PROMPT = "a <corgi> on the left and a <tabby> on the right"


def _with_stand_in(components: SDComponents, stand_in: str) -> SDComponents:
    return dataclasses.replace(components, options=PresetOptions(base_path_concept_words=stand_in))  # type: ignore[arg-type]


def _encode(
    components: SDComponents, parts: list[PromptPart], corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> torch.Tensor:
    embeddings = {"corgi": corgi.token_embeddings, "tabby": tabby.token_embeddings}
    layers = len(cross_attention_layer_names(components.unet))
    return encode_layerwise(components.tokenizer, components.text_encoder, [parts], embeddings, layers)


def test_preset_options_come_from_preset_json(tmp_path: Path) -> None:
    assert read_preset_options(tmp_path) == PresetOptions(base_path_concept_words="class_word")  # no file
    (tmp_path / "preset.json").write_text(json.dumps({"name": "x", "resolution": 64}))
    assert read_preset_options(tmp_path).base_path_concept_words == "class_word"  # no key
    (tmp_path / "preset.json").write_text(json.dumps({"base_path_concept_words": "learned_embeddings"}))
    assert read_preset_options(tmp_path).base_path_concept_words == "learned_embeddings"
    (tmp_path / "preset.json").write_text(json.dumps({"base_path_concept_words": "nonsense"}))
    with pytest.raises(ModelLoadError, match="base_path_concept_words"):
        read_preset_options(tmp_path)
    assert PresetOptions().conductor_refines_masks is True
    (tmp_path / "preset.json").write_text(json.dumps({"conductor_refine_masks": False}))
    assert read_preset_options(tmp_path).conductor_refines_masks is False
    (tmp_path / "preset.json").write_text(json.dumps({"conductor_refine_masks": "no"}))
    with pytest.raises(ModelLoadError, match="conductor_refine_masks"):
        read_preset_options(tmp_path)
    assert PresetOptions().conductor_merge_layers == "up_blocks"
    (tmp_path / "preset.json").write_text(json.dumps({"conductor_merge_layers": "all"}))
    assert read_preset_options(tmp_path).conductor_merge_layers == "all"
    (tmp_path / "preset.json").write_text(json.dumps({"conductor_merge_layers": "mid"}))
    with pytest.raises(ModelLoadError, match="conductor_merge_layers"):
        read_preset_options(tmp_path)
    assert PresetOptions().regional_region_prompt == "own_clause"  # Mix-of-Show's, SD 1.5 unchanged
    (tmp_path / "preset.json").write_text(json.dumps({"regional_region_prompt": "every_slot"}))
    assert read_preset_options(tmp_path).regional_region_prompt == "every_slot"
    (tmp_path / "preset.json").write_text(json.dumps({"regional_region_prompt": "both"}))
    with pytest.raises(ModelLoadError, match="regional_region_prompt"):
        read_preset_options(tmp_path)


def test_tiny_loads_with_class_word_stand_ins(components: SDComponents) -> None:
    assert components.options.base_path_concept_words == "class_word"


@pytest.mark.parametrize("stand_in", ["class_word", "learned_embeddings"])
def test_base_path_writes_concepts_as_the_presets_stand_in(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, stand_in: str
) -> None:
    adapted = _with_stand_in(components, stand_in)
    placements = [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)]
    layers = len(cross_attention_layer_names(components.unet))
    with torch.no_grad(), lora_scope(components.text_encoder, components.unet):
        base, concepts = encode_paths(
            adapted, sampling_request(PROMPT, placements, "blurry"), num_layers=layers, concept_prompt="full"
        )
        activate_lora(components.text_encoder, "tessera_concept_0", 0.7 * corgi.alpha)
        if stand_in == "class_word":
            own: list[PromptPart] = ["a ", ConceptSlot("corgi"), " on the left and a cat on the right"]
        else:
            own = ["a ", ConceptSlot("corgi"), " on the left and a ", ConceptSlot("tabby"), " on the right"]
        corgi_path = _encode(components, own, corgi, tabby)
        activate_lora(components.text_encoder, None)
        if stand_in == "class_word":
            expected: list[PromptPart] = ["a dog on the left and a cat on the right"]
        else:
            expected = ["a ", ConceptSlot("corgi"), " on the left and a ", ConceptSlot("tabby"), " on the right"]
        plain = _encode(components, expected, corgi, tabby)
    assert torch.equal(base.positive, plain)
    assert torch.equal(concepts[0].positive, corgi_path)
    # With learned embeddings as stand-ins, "on the right" sits at the same positions in the base and concept paths.
    tokens = [tokenize_parts(components.tokenizer, p)[0] for p in (expected, own)]
    assert (tokens[0] == tokens[1]) == (stand_in == "learned_embeddings")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # The full prompt: corgi is written as its stand-in (its class word on tiny).
        ("full", ["a dog on the left and a ", ConceptSlot("tabby"), " on the right"]),
        ("own_clause", ["a ", ConceptSlot("tabby"), " on the right"]),
        ("every_slot", ["a ", ConceptSlot("tabby"), " on the left and a ", ConceptSlot("tabby"), " on the right"]),
    ],
)
def test_concept_paths_read_the_configured_text(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, mode: PathPrompt, expected: list[PromptPart]
) -> None:
    placements = [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None, 1.25)]
    layers = len(cross_attention_layer_names(components.unet))
    with torch.no_grad(), lora_scope(components.text_encoder, components.unet):
        _, concepts = encode_paths(
            components, sampling_request(PROMPT, placements), num_layers=layers, concept_prompt=mode
        )
        activate_lora(components.text_encoder, "tessera_concept_1", 1.25 * tabby.alpha)
        reference = _encode(components, expected, corgi, tabby)
        # Both LoRAs of a concept are scaled by weight · alpha: the UNet's as much as the text encoder's.
        scales = {
            (name, round(float(module.scaling[name]), 6))
            for model in (components.unet, components.text_encoder)
            for module in model.modules()
            if isinstance(module, LoraLayer)
            for name in module.scaling
        }
    assert torch.equal(concepts[1].positive, reference)
    assert concepts[1].multiplier == pytest.approx(1.25 * tabby.alpha)
    assert scales == {
        ("tessera_concept_0", round(0.7 * corgi.alpha, 6)),
        ("tessera_concept_1", round(1.25 * tabby.alpha, 6)),
    }

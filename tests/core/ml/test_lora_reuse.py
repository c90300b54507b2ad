"""Kept peft wrappers (``core.ml.edlora.lora``): a reattached adapter leaves the models exactly as peft's own
injection does, generations are pixel-identical either way, and the components come back unchanged."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer

from core.errors import ModelLoadError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.lora import UNET_TARGETS, activate_lora, add_lora, fresh_lora_layers, lora_scope
from core.ml.fusion.conductor import ConductorConfig, generate_conductor
from core.ml.fusion.paths import attach_concepts
from core.ml.fusion.regional import ConceptPlacement, SamplingRequest, generate_regional
from core.ml.fusion.stacked import generate_stacked

PROMPT = "a photo of <corgi> and <tabby> on the beach"


def _layer_state(layer: LoraLayer) -> dict[str, Any]:
    """What a LoRA layer computes with and how it is switched (not ``requires_grad``: inference runs without grad)."""
    return {
        "adapters": list(layer.lora_A),
        "r": dict(layer.r),
        "lora_alpha": dict(layer.lora_alpha),
        "scaling": dict(layer.scaling),
        "use_dora": dict(layer.use_dora),
        "dropout": {k: type(v).__name__ for k, v in layer.lora_dropout.items()},
        "active": list(layer.active_adapters),
        "disabled": layer.disable_adapters,
        "merged": list(layer.merged_adapters),
        "weights": {
            f"{k}.{part}": getattr(layer, part)[k].weight.detach().clone()
            for k in layer.lora_A
            for part in ("lora_A", "lora_B")
        },
        "base": layer.get_base_layer(),
    }


def _model_state(model: torch.nn.Module) -> dict[str, Any]:
    layers = {name: _layer_state(m) for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    return {"layers": layers, "peft_config": list(vars(model).get("peft_config", {}))}


def _assert_same_state(reused: dict[str, Any], fresh: dict[str, Any]) -> None:
    assert reused["peft_config"] == fresh["peft_config"]
    assert reused["layers"].keys() == fresh["layers"].keys()
    for name, layer in fresh["layers"].items():
        other = reused["layers"][name]
        for key in ("adapters", "r", "lora_alpha", "scaling", "use_dora", "dropout", "active", "disabled", "merged"):
            assert other[key] == layer[key], (name, key)
        assert other["base"] is layer["base"]
        assert other["weights"].keys() == layer["weights"].keys()
        for key, weight in layer["weights"].items():
            assert other["weights"][key].dtype == weight.dtype and other["weights"][key].device == weight.device
            assert torch.equal(other["weights"][key], weight), (name, key)


def _attached_states(components: SDComponents, placements: list[ConceptPlacement]) -> list[dict[str, Any]]:
    """Text-encoder and UNet states after ``attach_concepts`` (what every fusion method starts from)."""
    with lora_scope(components.text_encoder, components.unet):
        attach_concepts(components, placements, placements[0].weights.num_layers)
        states = [_model_state(components.text_encoder), _model_state(components.unet)]
        # As regional sampling does: the wrappers leave this job disabled, the next one must start enabled.
        activate_lora(components.unet, None)
        return states


def _unet_wrappers(components: SDComponents, placements: list[ConceptPlacement]) -> list[torch.nn.Module]:
    with lora_scope(components.text_encoder, components.unet):
        attach_concepts(components, placements, placements[0].weights.num_layers)
        return [m for m in components.unet.modules() if isinstance(m, LoraLayer)]


def test_reattached_adapters_leave_the_state_peft_injection_leaves(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    jobs = [
        [ConceptPlacement(corgi, None, 0.7)],
        [ConceptPlacement(tabby, None, 0.5), ConceptPlacement(corgi, None, 1.2)],
        [ConceptPlacement(tabby, None, 0.9)],  # one concept after two: the second slot is set aside, not left in
        [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)],
        [ConceptPlacement(tabby, None, 0.3)],
    ]
    _attached_states(components, jobs[0])  # so that the first job below already reuses
    reused = [_attached_states(components, placements) for placements in jobs]
    with fresh_lora_layers():
        fresh = [_attached_states(components, placements) for placements in jobs]
    # And taking turns: a job injected without reuse leaves the kept wrappers usable.
    interleaved = []
    for placements in jobs:
        interleaved.append(_attached_states(components, placements))
        with fresh_lora_layers():
            _attached_states(components, placements)
    for job in zip(reused, interleaved, fresh, strict=True):
        for model_reused, model_interleaved, model_fresh in zip(*job, strict=True):
            _assert_same_state(model_reused, model_fresh)
            _assert_same_state(model_interleaved, model_fresh)
    unchanged()


def test_wrappers_are_reused_across_jobs(components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights) -> None:
    # Without this the equality tests could pass by always taking peft's path.
    first = _unet_wrappers(components, [ConceptPlacement(corgi, None)])
    second = _unet_wrappers(components, [ConceptPlacement(tabby, None)])
    assert first and all(a is b for a, b in zip(first, second, strict=True))
    with fresh_lora_layers():
        fresh = _unet_wrappers(components, [ConceptPlacement(tabby, None)])
    assert not any(a is b for a, b in zip(second, fresh, strict=True))
    third = _unet_wrappers(components, [ConceptPlacement(corgi, None)])
    assert all(a is b for a, b in zip(first, third, strict=True))


def test_switching_never_writes_into_an_adapter(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights
) -> None:
    before = {k: v.clone() for k, v in corgi.unet_lora.items()}
    for weights in (corgi, tabby, corgi, tabby):
        _unet_wrappers(components, [ConceptPlacement(weights, None)])
    assert all(torch.equal(corgi.unet_lora[k], v) for k, v in before.items())


def test_generations_are_pixel_identical_with_and_without_reuse(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    def generate(method: str, placements: list[ConceptPlacement]) -> list[np.ndarray[Any, Any]]:
        arguments: dict[str, Any] = {
            "prompt": " and ".join(f"a <{p.weights.concept_name}>" for p in placements),
            "negative_prompt": "lowres",
            "placements": placements,
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
            "guidance_scale": 7.5,
            "seed": 3,
        }
        request = SamplingRequest.create(**arguments)
        if method == "regional":
            result = generate_regional(components, request)
        elif method == "stacked":
            result = generate_stacked(components, request)
        else:
            config = ConductorConfig(kmeans_restarts=2, inversion_steps=2)
            result = generate_conductor(components, request, config=config)
        return [np.asarray(image) for image in result.images]

    both = [ConceptPlacement(corgi, (0, 0, 0.5, 1)), ConceptPlacement(tabby, (0.5, 0, 1, 1), 0.9)]
    # Every method after every other one (each leaves its wrappers switched its own way), one and two concepts.
    jobs = [
        (method, placements)
        for placements in (both, [ConceptPlacement(tabby, None)], both[::-1])
        for method in ("regional", "conductor", "stacked")
    ]
    generate(*jobs[-1])  # leaves wrappers to reuse
    reused = [generate(*job) for job in jobs]
    with fresh_lora_layers():
        fresh = [generate(*job) for job in jobs]
    for job, images_reused, images_fresh in zip(jobs, reused, fresh, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(images_reused, images_fresh, strict=True)), job[0]
    unchanged()


def test_an_adapter_that_does_not_fit_is_refused_with_kept_wrappers(
    components: SDComponents, corgi: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    _unet_wrappers(components, [ConceptPlacement(corgi, None)])  # wrappers kept
    missing = dict(list(corgi.unet_lora.items())[2:])
    wrong_shape = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in corgi.unet_lora.items()}
    for state_dict in (missing, wrong_shape):
        with pytest.raises(ModelLoadError), lora_scope(components.unet):
            add_lora(
                components.unet, "x", rank=corgi.rank, targets=UNET_TARGETS, multiplier=1.0, state_dict=state_dict
            )
    other_rank = dataclasses.replace(
        corgi, unet_lora={k: v[:2] if ".lora_A." in k else v[:, :2] for k, v in corgi.unet_lora.items()}, rank=2
    )
    states = []
    for reuse in (True, False):
        with lora_scope(components.unet):
            if reuse:
                add_lora(
                    components.unet,
                    "tessera_concept_0",
                    rank=2,
                    targets=UNET_TARGETS,
                    multiplier=1.0,
                    state_dict=other_rank.unet_lora,
                )
            else:
                with fresh_lora_layers():
                    add_lora(
                        components.unet,
                        "tessera_concept_0",
                        rank=2,
                        targets=UNET_TARGETS,
                        multiplier=1.0,
                        state_dict=other_rank.unet_lora,
                    )
            states.append(_model_state(components.unet))
    _assert_same_state(*states)
    unchanged()


def test_an_adapter_of_another_name_takes_a_kept_slot(
    components: SDComponents, corgi: EDLoRAWeights, tabby: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    # A training job's diagnostic attaches its adapter under its own name between generations: it must reuse the
    # generations' wrappers (and leave them for the next generation), not inject new ones and drop the kept ones.
    first = _unet_wrappers(components, [ConceptPlacement(corgi, None)])

    def diagnostic() -> tuple[list[torch.nn.Module], dict[str, Any]]:
        with lora_scope(components.unet):
            add_lora(
                components.unet,
                "tessera_diagnostic",
                rank=tabby.rank,
                targets=UNET_TARGETS,
                multiplier=1.0,
                state_dict=tabby.unet_lora,
            )
            layers = [m for m in components.unet.modules() if isinstance(m, LoraLayer)]
            return layers, _model_state(components.unet)

    reused_layers, reused = diagnostic()
    with fresh_lora_layers():
        _, fresh = diagnostic()
    _assert_same_state(reused, fresh)
    assert all(a is b for a, b in zip(first, reused_layers, strict=True))
    after = _unet_wrappers(components, [ConceptPlacement(corgi, None), ConceptPlacement(tabby, None)])
    assert all(a is b for a, b in zip(first, after, strict=True))
    unchanged()

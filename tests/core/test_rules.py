"""The shared rules (core.rules): the API's request models and the ML code read the same limits and the same
concept-reference rule, so a request the API accepts is one the fusion code accepts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core import rules
from core.ml.prompts import bind_prompt, every_slot_prompt
from core.schemas import ConceptSpec, GenerationRequest, TrainingRequest
from core.training_options import EDLoRAConfig


def test_a_reference_is_a_name_or_an_id_for_the_api_and_the_ml_side_alike() -> None:
    prompt = "a <corgi> beside <cpt_0123456789abcdef01234567> and <Mixed-Case_9>"
    expected = ["corgi", "cpt_0123456789abcdef01234567", "Mixed-Case_9"]
    assert rules.concept_refs(prompt) == expected
    assert GenerationRequest(prompt=prompt).concept_refs() == expected
    # The ML side splits the prompt at the same references (an id is a slot too, not plain text).
    parts = bind_prompt(prompt, learned=set(expected), class_words={})
    assert [p.name for p in parts if not isinstance(p, str)] == expected
    assert every_slot_prompt(prompt, "corgi") == "a <corgi> beside <corgi> and <corgi>"


@pytest.mark.parametrize("text", ["<>", "<a b>", "<" + "x" * 65 + ">", "<dog!>"])
def test_what_is_not_a_reference_stays_text(text: str) -> None:
    assert rules.concept_refs(f"a photo of {text}") == []


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("corgi", True),
        ("0dog_2-b", True),
        ("a" * 40, True),
        ("a" * 41, False),
        ("-dog", False),
        ("Dog", False),
        ("cpt_0123456789abcdef01234567", True),
        ("dog\n", False),
        ("", False),
    ],
)
def test_the_concept_name_rule_is_the_api_rule(name: str, valid: bool) -> None:
    assert rules.is_concept_name(name) is valid
    if valid:
        assert ConceptSpec(name=name, class_word="dog").name == name
    else:
        with pytest.raises(ValidationError):
            ConceptSpec(name=name, class_word="dog")


def test_the_api_request_limits_are_the_shared_limits() -> None:
    at_limit = GenerationRequest(
        prompt="p" * rules.MAX_PROMPT_CHARS,
        width=rules.MAX_SIDE,
        height=rules.MIN_SIDE,
        num_inference_steps=rules.MAX_STEPS,
        guidance_scale=rules.MAX_GUIDANCE,
        num_outputs=rules.MAX_OUTPUTS,
        seed=rules.MAX_REQUEST_SEED,
        concepts=[{"concept": f"c{i}", "weight": rules.MAX_WEIGHT} for i in range(rules.MAX_CONCEPTS)],
    )
    assert at_limit.width == rules.MAX_SIDE
    over = {
        "prompt": "p" * (rules.MAX_PROMPT_CHARS + 1),
        "width": rules.MAX_SIDE + rules.SIDE_MULTIPLE,
        "height": rules.MIN_SIDE - rules.SIDE_MULTIPLE,
        "num_inference_steps": rules.MAX_STEPS + 1,
        "guidance_scale": rules.MAX_GUIDANCE + 0.5,
        "num_outputs": rules.MAX_OUTPUTS + 1,
        "seed": rules.MAX_REQUEST_SEED + 1,
        "concepts": [{"concept": f"c{i}"} for i in range(rules.MAX_CONCEPTS + 1)],
    }
    for field, value in over.items():
        with pytest.raises(ValidationError) as info:
            GenerationRequest.model_validate({"prompt": "p", field: value})
        assert info.value.errors()[0]["loc"][0] == field
    with pytest.raises(ValidationError):
        TrainingRequest.model_validate(
            {"concept": {"name": "dog", "class_word": "dog"}, "images": ["f"] * (rules.MAX_TRAINING_IMAGES + 1)}
        )
    with pytest.raises(ValidationError):
        EDLoRAConfig(max_train_steps=rules.MAX_TRAINING_STEPS + 1)
    with pytest.raises(ValidationError):
        EDLoRAConfig(resolution=rules.MAX_SIDE + rules.SIDE_MULTIPLE)

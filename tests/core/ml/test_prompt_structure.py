"""A prompt parsed once (``Prompt``) and a sampling request checked once (``SamplingRequest``): every text a fusion
path or the styling stage reads is cut from the parsed pieces, and a bad request is refused when it is made."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequestError, UnknownConceptError
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.fusion.request import ConceptPlacement, SamplingRequest
from core.ml.prompts import ConceptSlot, Prompt

WORDS = {"corgi": "dog", "tabby": "cat"}


def test_the_parsed_prompt_gives_every_path_text_without_parsing_again() -> None:
    prompt = Prompt.parse("<corgi>, <tabby> and a ball; on the beach, 4k", WORDS)
    assert prompt.names == ("corgi", "tabby")
    assert prompt.pieces == (ConceptSlot("corgi"), ", ", ConceptSlot("tabby"), " and a ball; on the beach, 4k")
    own = prompt.for_path("corgi", "own_clause")
    assert own.text == "<corgi>, a ball, on the beach, 4k" and own.class_words == WORDS
    assert prompt.for_path("tabby", "every_slot").text == "<tabby>, <tabby> and a ball; on the beach, 4k"
    assert prompt.for_path("tabby", "full") is prompt
    assert prompt.class_word_text() == "dog, cat and a ball; on the beach, 4k"
    # A clause that starts or ends at a reference keeps the reference; whitespace around a clause goes.
    tight = Prompt.parse("  <corgi>;<tabby> left  ,  sky ", WORDS)
    assert tight.own_clause("tabby").pieces == (ConceptSlot("tabby"), " left, sky")


def test_binding_writes_learned_words_or_stand_ins_and_refuses_unknown_names() -> None:
    prompt = Prompt.parse("a <corgi> and a <tabby>", WORDS)
    assert prompt.bind_concepts(adapted=["corgi"], stand_in="class_word") == ["a ", ConceptSlot("corgi"), " and a cat"]
    assert prompt.bind_concepts(adapted=(), stand_in="learned_embeddings") == list(prompt.pieces)
    with pytest.raises(UnknownConceptError) as info:
        Prompt.parse("a <rex>", WORDS).bind_concepts(adapted=(), stand_in="class_word", field="negative_prompt")
    assert info.value.field == "negative_prompt" and "<rex>" in info.value.message


def test_a_sampling_request_is_checked_when_it_is_made(corgi: EDLoRAWeights) -> None:
    values = {"width": 64, "height": 64, "num_inference_steps": 2, "guidance_scale": 7.5, "seed": 1}
    placements = [ConceptPlacement(corgi, None)]
    request = SamplingRequest.create(prompt="a <corgi>", placements=placements, num_outputs=3, **values)
    assert request.seeds == [1, 2, 3] and request.use_cfg and request.prompt.class_words == {"corgi": "dog"}
    with pytest.raises(UnknownConceptError) as unknown:
        SamplingRequest.create(prompt="a <corgi>", negative_prompt="<rex>", placements=placements, **values)
    assert unknown.value.field == "negative_prompt"
    with pytest.raises(InvalidRequestError) as missing:
        SamplingRequest.create(prompt="a dog", placements=placements, **values)
    assert missing.value.field == "prompt"
    with pytest.raises(InvalidRequestError) as width:
        SamplingRequest.create(prompt="a <corgi>", placements=placements, **{**values, "width": 60})
    assert width.value.field == "width"

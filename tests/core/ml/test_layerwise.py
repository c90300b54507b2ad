"""Prompts with concept slots, layer-wise encoding, and the ED-LoRA cross-attention processor."""

from __future__ import annotations

import pytest
import torch

from core.errors import InvalidRequestError, UnknownConceptError
from core.ml.components import SDComponents
from core.ml.edlora.attention import EDLoRAAttnProcessor, cross_attention_layer_names, layerwise_cross_attention
from core.ml.edlora.embeddings import encode_layerwise, tokenize_parts
from core.ml.prompts import (
    ConceptSlot,
    bind_caption,
    bind_concepts,
    bind_prompt,
    every_slot_prompt,
    parts_text,
    single_concept_prompt,
)
from core.rules import concept_refs


def test_bind_prompt_learned_and_class_words() -> None:
    prompt = "a photo of <corgi> and <tabby> on the beach"
    assert concept_refs(prompt) == ["corgi", "tabby"]
    parts = bind_prompt(prompt, learned={"corgi"}, class_words={"tabby": "cat"})
    assert parts == ["a photo of ", ConceptSlot("corgi"), " and cat on the beach"]
    assert bind_prompt(prompt, learned=(), class_words={"corgi": "dog", "tabby": "cat"}) == [
        "a photo of dog and cat on the beach"
    ]
    with pytest.raises(UnknownConceptError) as info:
        bind_prompt(prompt, learned={"corgi"}, class_words={})
    assert info.value.field == "prompt"


def test_bind_concepts_writes_other_concepts_as_their_stand_in(components: SDComponents) -> None:
    prompt = "a <corgi> and a <tabby> on the beach"
    words = {"corgi": "dog", "tabby": "cat"}
    by_word = bind_concepts(prompt, adapted=["corgi"], class_words=words, stand_in="class_word")
    assert by_word == ["a ", ConceptSlot("corgi"), " and a cat on the beach"]
    by_embedding = bind_concepts(prompt, adapted=["corgi"], class_words=words, stand_in="learned_embeddings")
    assert by_embedding == ["a ", ConceptSlot("corgi"), " and a ", ConceptSlot("tabby"), " on the beach"]
    assert bind_concepts(prompt, adapted=(), class_words=words, stand_in="class_word") == [
        "a dog and a cat on the beach"
    ]
    # Learned-embedding stand-ins keep every later token where the adapted text has it; class words shift it by one.
    _, own = tokenize_parts(
        components.tokenizer,
        bind_concepts(prompt, adapted=["tabby"], class_words=words, stand_in="learned_embeddings"),
    )
    _, base = tokenize_parts(components.tokenizer, by_embedding)
    assert own == base and [s[0] for s in own] == [2, 3, 6, 7]
    assert parts_text(by_embedding) == prompt


def test_single_concept_prompt_keeps_the_clauses_that_name_the_concept() -> None:
    pair = "a <red> on the left and a <blue> on the right"
    assert single_concept_prompt(pair, "red") == "a <red> on the left"
    assert single_concept_prompt(pair, "blue") == "a <blue> on the right"
    scene = "<corgi>, <tabby> and a ball; on the beach, 4k"
    assert single_concept_prompt(scene, "corgi") == "<corgi>, a ball, on the beach, 4k"  # no-concept clauses: shared
    assert single_concept_prompt(scene, "tabby") == "<tabby>, a ball, on the beach, 4k"
    assert single_concept_prompt("<corgi> chasing <tabby>, at dusk", "corgi") == "<corgi> chasing <tabby>, at dusk"
    assert single_concept_prompt("a <corgi> and a ball", "corgi") == "a <corgi> and a ball"  # one concept: as is
    assert every_slot_prompt(pair, "blue") == "a <blue> on the left and a <blue> on the right"


def test_bind_caption() -> None:
    assert bind_caption("<concept> on <corgi>", "corgi") == [ConceptSlot("corgi"), " on ", ConceptSlot("corgi")]
    with pytest.raises(InvalidRequestError):
        bind_caption("no placeholder", "corgi")


def test_tokenize_parts_places_two_words_per_slot(components: SDComponents) -> None:
    tokenizer = components.tokenizer
    ids, slots = tokenize_parts(tokenizer, ["a photo of ", ConceptSlot("corgi")])
    assert len(ids) == tokenizer.model_max_length and ids[0] == tokenizer.bos_token_id
    assert slots == [(4, "corgi", 0), (5, "corgi", 1)]
    assert ids[6] == tokenizer.eos_token_id
    long_ids, long_slots = tokenize_parts(tokenizer, ["a " * 40, ConceptSlot("corgi")])
    assert len(long_ids) == tokenizer.model_max_length and long_slots == []


def test_encode_layerwise_gives_each_layer_its_rows(components: SDComponents) -> None:
    embeddings = {"corgi": torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        states = encode_layerwise(
            components.tokenizer, components.text_encoder, [["a ", ConceptSlot("corgi")]], embeddings, 4
        )
        plain = encode_layerwise(components.tokenizer, components.text_encoder, [["a dog"]], {}, 4)
    assert states.shape == (1, 4, 32, 32)
    assert not torch.allclose(states[0, 0], states[0, 1])
    assert torch.equal(states[0, :, 0], states[0, :1, 0].expand(4, 32))  # BOS precedes the concept: same everywhere
    assert torch.equal(plain[0, 0], plain[0, 3])
    # Equal rows on every layer give the same states on every layer.
    same = {"corgi": embeddings["corgi"][:, :1].expand(2, 4, 32)}
    with torch.no_grad():
        flat = encode_layerwise(components.tokenizer, components.text_encoder, [["a ", ConceptSlot("corgi")]], same, 4)
    assert torch.allclose(flat[0, 0], flat[0, 3])


def test_cross_attention_order_is_down_mid_up(components: SDComponents) -> None:
    names = cross_attention_layer_names(components.unet)
    assert [n.split(".")[0] for n in names] == ["down_blocks", "mid_block", "up_blocks", "up_blocks"]


def test_layerwise_processor_slices_its_layer_and_is_removed(components: SDComponents) -> None:
    unet = components.unet
    before = dict(unet.attn_processors)
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = unet(sample, 5, encoder_hidden_states=context).sample
        with layerwise_cross_attention(unet) as num_layers:
            assert num_layers == 4
            processors = unet.attn_processors
            assert sum(isinstance(p, EDLoRAAttnProcessor) for p in processors.values()) == 4
            repeated = unet(sample, 5, encoder_hidden_states=context[:, None].expand(1, 4, 32, 32)).sample
            varied = context[:, None].repeat(1, 4, 1, 1)
            varied[:, 2] += 1.0  # only the third layer (up_blocks, first attention) sees a different context
            changed = unet(sample, 5, encoder_hidden_states=varied).sample
    assert torch.allclose(repeated, reference, atol=1e-6)
    assert not torch.allclose(changed, reference)
    assert all(unet.attn_processors[k] is v for k, v in before.items())

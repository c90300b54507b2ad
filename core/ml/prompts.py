"""Concept references in prompts (``<corgi>``) and the captions ED-LoRA trains with.

A prompt is split into *parts*: plain text, and ``ConceptSlot``s where a concept's two learned words go. The
text encoder side (``core.ml.edlora.embeddings``) turns parts into token ids plus per-layer embeddings.

Fusion writes each text it encodes for one adapter (or none): the concepts it adapts become their learned words,
every other concept its *stand-in* (``StandIn``: its class word, or its learned words with no LoRA, a per-preset
choice), see ``bind_concepts``. It can also cut a prompt down to the part that names one concept
(``single_concept_prompt``) or write one concept in every slot (``every_slot_prompt``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from core.errors import InvalidRequestError, UnknownConceptError
from core.rules import CONCEPT_REF_RE, concept_refs

CAPTION_PLACEHOLDER = "<concept>"
"""Stands for the concept's learned words in training captions."""

CAPTION_TEMPLATES = (
    "a photo of a <concept>",
    "a rendering of a <concept>",
    "a cropped photo of the <concept>",
    "the photo of a <concept>",
    "a photo of a clean <concept>",
    "a close-up photo of a <concept>",
    "a bright photo of the <concept>",
    "a good photo of a <concept>",
    "a photo of one <concept>",
    "a photo of the nice <concept>",
    "a photo of the small <concept>",
    "a photo of the large <concept>",
)
"""Default training captions (Textual Inversion's object templates, as Mix-of-Show's ``EnhanceText('object')``)."""


@dataclass(frozen=True)
class ConceptSlot:
    """Where the two learned words of concept ``name`` are written into a prompt."""

    name: str


PromptPart = str | ConceptSlot

StandIn = Literal["class_word", "learned_embeddings"]
"""How a concept is written in a text that does not apply its adapter: ``"class_word"`` (usually one token, so
every later token shifts by one) or ``"learned_embeddings"`` (its two learned words, encoded without its LoRA: the
slot keeps its two tokens)."""

_CLAUSE_BREAK = re.compile(r"\s*[,;]\s*|\s+and\s+", re.IGNORECASE)
"""Where ``single_concept_prompt`` cuts a prompt: commas, semicolons and the word "and"."""


def bind_prompt(
    prompt: str,
    *,
    learned: Collection[str],
    class_words: Mapping[str, str],
    field: str = "prompt",
) -> list[PromptPart]:
    """Split a prompt into text and concept slots.

    Args:
        prompt: text with ``<name>`` references.
        learned: names whose reference becomes a ``ConceptSlot`` (the learned ED-LoRA words).
        class_words: name → class word for every other known concept; its reference becomes the plain class word.
        field: request field named in errors.

    Returns:
        Parts in order; adjacent text is kept together.

    Raises:
        UnknownConceptError: the prompt references a name that is in neither ``learned`` nor ``class_words``.
    """
    parts: list[PromptPart] = []
    position = 0
    for match in CONCEPT_REF_RE.finditer(prompt):
        name = match.group(1)
        text = prompt[position : match.start()]
        position = match.end()
        if name in learned:
            if text:
                parts.append(text)
            parts.append(ConceptSlot(name))
        elif name in class_words:
            parts.append(text + class_words[name])
        else:
            known = sorted({*learned, *class_words})
            raise UnknownConceptError(
                f"{field} references <{name}>, which is not one of the concepts given ({known})", field=field
            )
    parts.append(prompt[position:])
    merged: list[PromptPart] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif part != "":
            merged.append(part)
    return merged


def bind_concepts(
    prompt: str,
    *,
    adapted: Collection[str],
    class_words: Mapping[str, str],
    stand_in: StandIn,
    field: str = "prompt",
) -> list[PromptPart]:
    """Split a prompt for a text encoded with the adapters of ``adapted`` (empty for the base model).

    Args:
        adapted: names written as their learned words (the caller encodes with their text-encoder LoRA active).
        class_words: name → class word for every concept of the request.
        stand_in: how every other concept of ``class_words`` is written: its class word, or a ``ConceptSlot``
            (its learned words; the caller passes its embeddings and leaves its LoRA off).

    Raises:
        UnknownConceptError: a reference to a name in neither ``adapted`` nor ``class_words``.
    """
    learned = set(adapted) | (set(class_words) if stand_in == "learned_embeddings" else set())
    others = {k: v for k, v in class_words.items() if k not in learned}
    return bind_prompt(prompt, learned=learned, class_words=others, field=field)


def single_concept_prompt(prompt: str, name: str) -> str:
    """The part of ``prompt`` that names ``<name>``: its clauses, plus the clauses that name no concept.

    The prompt is cut at commas, semicolons and "and"; a clause that names another concept and not ``name`` is
    dropped, the rest are joined by ", " in order. A clause naming ``name`` together with another concept
    (``"<a> chasing <b>"``) is kept whole, the other reference still in it. ``"a <red> on the left and a <blue>
    on the right"`` gives ``"a <red> on the left"`` for ``red``; a prompt naming one concept comes back unchanged.
    """
    if len(concept_refs(prompt)) < 2:
        return prompt
    clauses = [c for c in _CLAUSE_BREAK.split(prompt) if c.strip()]
    kept = [c for c in clauses if name in concept_refs(c) or not concept_refs(c)]
    return ", ".join(c.strip() for c in kept)


def every_slot_prompt(prompt: str, name: str) -> str:
    """``prompt`` with every concept reference replaced by ``<name>`` (Concept Conductor's shipped custom prompts:
    "A <dog> and a <dog> on the beach" for the dog's path)."""
    return CONCEPT_REF_RE.sub(f"<{name}>", prompt)


PathPrompt = Literal["full", "own_clause", "every_slot"]
"""What a text written for one concept reads: the full prompt (other concepts as stand-ins), only the clauses that
name the concept (:func:`single_concept_prompt`), or the prompt with the concept in every slot
(:func:`every_slot_prompt`)."""


def path_text(prompt: str, name: str, mode: PathPrompt) -> str:
    """The text concept ``name``'s path (conductor) or region (regional) reads (see ``PathPrompt``)."""
    if mode == "own_clause":
        return single_concept_prompt(prompt, name)
    if mode == "every_slot":
        return every_slot_prompt(prompt, name)
    return prompt


def parts_text(parts: Sequence[PromptPart]) -> str:
    """A bound prompt as text, each slot written ``<name>`` (for logs and cache keys)."""
    return "".join(p if isinstance(p, str) else f"<{p.name}>" for p in parts)


def bind_caption(caption: str, concept_name: str, *, field: str = "captions") -> list[PromptPart]:
    """Split a training caption; every ``<concept>`` (or ``<concept_name>``) becomes the concept's slot.

    Raises:
        InvalidRequestError: the caption does not contain ``<concept>``, so it would not train the concept.
    """
    text = caption.replace(f"<{concept_name}>", CAPTION_PLACEHOLDER)
    if CAPTION_PLACEHOLDER not in text:
        raise InvalidRequestError(
            f"{field} must contain {CAPTION_PLACEHOLDER} where the concept goes, got {caption!r}", field=field
        )
    pieces = text.split(CAPTION_PLACEHOLDER)
    parts: list[PromptPart] = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append(ConceptSlot(concept_name))
        if piece:
            parts.append(piece)
    return parts

"""Concept references in prompts (``<corgi>``) and the captions ED-LoRA trains with.

A prompt is split into *parts*: plain text, and ``ConceptSlot``s where a concept's two learned words go. The
text encoder side (``core.ml.edlora.embeddings``) turns parts into token ids plus per-layer embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from core.errors import InvalidRequestError, UnknownConceptError

CONCEPT_REF = re.compile(r"<([a-z0-9][a-z0-9_-]{0,39})>")
"""``<name>`` in a prompt; names follow the API's concept name rule ``^[a-z0-9][a-z0-9_-]{0,39}$``."""

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


def concept_refs(prompt: str) -> list[str]:
    """Names referenced as ``<name>`` in a prompt, each once, in order of first appearance."""
    return list(dict.fromkeys(CONCEPT_REF.findall(prompt)))


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
    for match in CONCEPT_REF.finditer(prompt):
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

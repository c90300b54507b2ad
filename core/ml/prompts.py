"""Concept references in prompts (``<corgi>``) and the captions ED-LoRA trains with.

A prompt is split into *parts*: plain text, and ``ConceptSlot``s where a concept's two learned words go. The
text encoder side (``core.ml.edlora.embeddings``) turns parts into token ids plus per-layer embeddings.

Fusion writes each text it encodes for one adapter (or none): the concepts it adapts become their learned words,
every other concept its *stand-in* (``StandIn``: its class word, or its learned words with no LoRA, a per-preset
choice), see ``Prompt.bind_concepts``. It can also cut a prompt down to the part that names one concept
(``Prompt.own_clause``) or write one concept in every slot (``Prompt.every_slot``). A request's prompt is parsed
once into a ``Prompt``; the text functions below (``bind_prompt``, ``single_concept_prompt``…) parse a string for
callers that hold one.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from core.errors import InvalidRequestError, UnknownConceptError
from core.rules import CONCEPT_REF_RE

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
"""Where ``Prompt.own_clause`` cuts a prompt: commas, semicolons and the word "and"."""


PathPrompt = Literal["full", "own_clause", "every_slot"]
"""What a text written for one concept reads: the full prompt (other concepts as stand-ins), only the clauses that
name the concept (``Prompt.own_clause``), or the prompt with the concept in every slot (``Prompt.every_slot``)."""


def _merge(parts: Sequence[PromptPart]) -> tuple[PromptPart, ...]:
    """``parts`` with adjacent text joined and empty text dropped."""
    merged: list[PromptPart] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif part != "":
            merged.append(part)
    return tuple(merged)


def parts_text(parts: Sequence[PromptPart]) -> str:
    """A bound prompt as text, each slot written ``<name>`` (for logs and cache keys)."""
    return "".join(p if isinstance(p, str) else f"<{p.name}>" for p in parts)


def _strip(clause: Sequence[PromptPart]) -> list[PromptPart]:
    """A clause without the whitespace at its two ends (a slot is never whitespace)."""
    stripped = list(clause)
    if stripped and isinstance(stripped[0], str):
        stripped[0] = stripped[0].lstrip()
    if stripped and isinstance(stripped[-1], str):
        stripped[-1] = stripped[-1].rstrip()
    return stripped


@dataclass(frozen=True)
class Prompt:
    """A prompt parsed once: its text cut at every ``<name>`` reference into text and concept slots, with the class
    word of each concept it may name.

    Fusion writes every text it encodes from this structure (``bind_concepts``, ``for_path``) and the styling stage
    reads ``class_word_text``; nothing parses the text again.

    Args:
        text: the prompt as given (for a derived prompt, its pieces written out).
        pieces: ``text`` in order: plain text, and a ``ConceptSlot`` for every reference (adjacent text joined).
        class_words: name → class word of every concept of the request (the names a reference may use).
    """

    text: str
    pieces: tuple[PromptPart, ...]
    class_words: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, class_words: Mapping[str, str] | None = None) -> Prompt:
        """Cut ``text`` at its concept references (``core.rules.CONCEPT_REF_RE``); unknown names are refused by
        ``check`` and ``bind``, not here."""
        pieces: list[PromptPart] = []
        position = 0
        for match in CONCEPT_REF_RE.finditer(text):
            pieces += [text[position : match.start()], ConceptSlot(match.group(1))]
            position = match.end()
        pieces.append(text[position:])
        return cls(text, _merge(pieces), dict(class_words or {}))

    @property
    def names(self) -> tuple[str, ...]:
        """The concepts referenced, each once, in order of first appearance."""
        return tuple(dict.fromkeys(p.name for p in self.pieces if isinstance(p, ConceptSlot)))

    def check(self, known: Collection[str], *, field: str = "prompt") -> None:
        """Refuse a reference to a name outside ``known``.

        Raises:
            UnknownConceptError: the first such reference (``field`` names the request field).
        """
        for name in self.names:
            if name not in known:
                raise UnknownConceptError(
                    f"{field} references <{name}>, which is not one of the concepts given ({sorted(known)})",
                    field=field,
                )

    def bind(
        self, *, learned: Collection[str], class_words: Mapping[str, str], field: str = "prompt"
    ) -> list[PromptPart]:
        """The parts to encode: a reference to a ``learned`` name stays a ``ConceptSlot`` (its learned ED-LoRA
        words), one to a name of ``class_words`` becomes that plain class word; adjacent text is kept together.

        Raises:
            UnknownConceptError: a reference to a name in neither ``learned`` nor ``class_words``.
        """
        self.check({*learned, *class_words}, field=field)
        bound = [p if isinstance(p, str) or p.name in learned else class_words[p.name] for p in self.pieces]
        return list(_merge(bound))

    def bind_concepts(self, *, adapted: Collection[str], stand_in: StandIn, field: str = "prompt") -> list[PromptPart]:
        """The parts of a text encoded with the adapters of ``adapted`` (empty for the base model).

        Args:
            adapted: names written as their learned words (the caller encodes with their text-encoder LoRA active).
            stand_in: how every other concept of ``class_words`` is written: its class word, or a ``ConceptSlot``
                (its learned words; the caller passes its embeddings and leaves its LoRA off).

        Raises:
            UnknownConceptError: a reference to a name in neither ``adapted`` nor ``class_words``.
        """
        learned = set(adapted) | (set(self.class_words) if stand_in == "learned_embeddings" else set())
        others = {k: v for k, v in self.class_words.items() if k not in learned}
        return self.bind(learned=learned, class_words=others, field=field)

    def class_word_text(self, *, field: str = "prompt") -> str:
        """The text with every concept written as its class word (for the base model, which has no ED-LoRA)."""
        parts = self.bind(learned=(), class_words=self.class_words, field=field)
        return "".join(p for p in parts if isinstance(p, str))

    def _derived(self, pieces: Sequence[PromptPart]) -> Prompt:
        merged = _merge(pieces)
        return Prompt(parts_text(merged), merged, self.class_words)

    def own_clause(self, name: str) -> Prompt:
        """The part that names ``<name>``: its clauses, plus the clauses that name no concept.

        The prompt is cut at commas, semicolons and "and"; a clause that names another concept and not ``name`` is
        dropped, the rest are joined by ", " in order. A clause naming ``name`` together with another concept
        (``"<a> chasing <b>"``) is kept whole, the other reference still in it. ``"a <red> on the left and a <blue>
        on the right"`` gives ``"a <red> on the left"`` for ``red``; a prompt naming one concept comes back as is.
        """
        if len(self.names) < 2:
            return self
        # A reference holds no comma, semicolon or whitespace, so cutting the text pieces cuts the whole prompt.
        clauses: list[list[PromptPart]] = [[]]
        for piece in self.pieces:
            if isinstance(piece, ConceptSlot):
                clauses[-1].append(piece)
                continue
            first, *rest = _CLAUSE_BREAK.split(piece)
            clauses[-1].append(first)
            clauses += [[chunk] for chunk in rest]
        kept: list[PromptPart] = []
        for clause in clauses:
            slots = {p.name for p in clause if isinstance(p, ConceptSlot)}
            if not parts_text(clause).strip() or (slots and name not in slots):
                continue
            kept += [", ", *_strip(clause)] if kept else _strip(clause)
        return self._derived(kept)

    def every_slot(self, name: str) -> Prompt:
        """Every concept reference replaced by ``<name>`` (Concept Conductor's shipped custom prompts: "A <dog> and a
        <dog> on the beach" for the dog's path)."""
        return self._derived([ConceptSlot(name) if isinstance(p, ConceptSlot) else p for p in self.pieces])

    def for_path(self, name: str, mode: PathPrompt) -> Prompt:
        """The text concept ``name``'s path (conductor) or region (regional) reads (see ``PathPrompt``)."""
        if mode == "own_clause":
            return self.own_clause(name)
        if mode == "every_slot":
            return self.every_slot(name)
        return self


def bind_prompt(
    prompt: str,
    *,
    learned: Collection[str],
    class_words: Mapping[str, str],
    field: str = "prompt",
) -> list[PromptPart]:
    """Split a prompt into text and concept slots (``Prompt.bind`` of the parsed text).

    Args:
        prompt: text with ``<name>`` references.
        learned: names whose reference becomes a ``ConceptSlot`` (the learned ED-LoRA words).
        class_words: name → class word for every other known concept; its reference becomes the plain class word.
        field: request field named in errors.

    Raises:
        UnknownConceptError: the prompt references a name that is in neither ``learned`` nor ``class_words``.
    """
    return Prompt.parse(prompt).bind(learned=learned, class_words=class_words, field=field)


def bind_concepts(
    prompt: str,
    *,
    adapted: Collection[str],
    class_words: Mapping[str, str],
    stand_in: StandIn,
    field: str = "prompt",
) -> list[PromptPart]:
    """Split a prompt for a text encoded with the adapters of ``adapted`` (``Prompt.bind_concepts``)."""
    return Prompt.parse(prompt, class_words).bind_concepts(adapted=adapted, stand_in=stand_in, field=field)


def single_concept_prompt(prompt: str, name: str) -> str:
    """The part of ``prompt`` that names ``<name>`` (``Prompt.own_clause``)."""
    return Prompt.parse(prompt).own_clause(name).text


def every_slot_prompt(prompt: str, name: str) -> str:
    """``prompt`` with every concept reference replaced by ``<name>`` (``Prompt.every_slot``)."""
    return Prompt.parse(prompt).every_slot(name).text


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

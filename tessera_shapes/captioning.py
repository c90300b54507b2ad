"""Captions of the shapes world: the canonical caption of one or two objects, the varied wordings base training
sees (:class:`CaptionStyle`, :func:`describe`) and parsing a caption back into the objects it names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tessera_shapes.world import ANY_COLOUR, ObjectSpec


def caption_for(specs: Sequence[ObjectSpec], *, centre_phrase: bool = False) -> str:
    """The canonical caption of one or two objects (what evaluation prompts and the concept recipes use).

    One centred object reads ``"a red circle"`` (``"a red circle in the center"`` with ``centre_phrase``);
    one object at a side ``"a red circle on the left"``; two objects
    ``"a red circle on the left and a blue square on the right"`` (in the order given).
    """
    if len(specs) == 1:
        (spec,) = specs
        if spec.position == "center":
            return spec.noun_phrase + (" in the center" if centre_phrase else "")
        return f"{spec.noun_phrase} on the {spec.position}"
    if len(specs) == 2 and {s.position for s in specs} == {"left", "right"}:
        return " and ".join(f"{s.noun_phrase} on the {s.position}" for s in specs)
    raise ValueError(f"`specs` must be one object or a left/right pair but is {specs!r}.")


@dataclass(frozen=True)
class CaptionStyle:
    """How freely :func:`describe` words a scene; the base model is trained on these variants so that it reads
    words by what they say rather than by their token index.

    Args:
        drop_colour: chance that an object's colour word is left out ("a triangle on the right").
        definite: chance of "the" instead of "a"/"an".
        solid_word: chance that a solid object is called "solid".
        centre_phrase: chance that a lone centred object is said to be "in the center".
        shuffle: whether objects of a multi-object scene are listed in random order (else left to right).
    """

    drop_colour: float = 0.25
    definite: float = 0.15
    solid_word: float = 0.1
    centre_phrase: float = 0.3
    shuffle: bool = True


def _phrase(spec: ObjectSpec, rng: np.random.Generator, style: CaptionStyle, *, lone: bool) -> str:
    words = []
    if spec.pattern != "solid":
        words.append(spec.pattern)
    elif rng.random() < style.solid_word:
        words.append("solid")
    if rng.random() >= style.drop_colour:
        words.append(spec.colour)
    words.append(spec.shape)
    article = "the" if rng.random() < style.definite else ("an" if words[0][0] in "aeiou" else "a")
    noun = " ".join([article, *words])
    if spec.position != "center":
        return f"{noun} on the {spec.position}"
    if not lone or rng.random() < style.centre_phrase:
        return f"{noun} in the center"
    return noun


def describe(specs: Sequence[ObjectSpec], rng: np.random.Generator, style: CaptionStyle = CaptionStyle()) -> str:
    """A varied caption of one to three objects, e.g. ``"the triangle on the right and a red circle on the left"``.

    Every object is named by its shape and placed by its position; colour, article, "solid" and the order of the
    objects vary as ``style`` says.
    """
    order = list(specs)
    if style.shuffle and len(order) > 1:
        order = [order[int(i)] for i in rng.permutation(len(order))]
    return " and ".join(_phrase(spec, rng, style, lone=len(specs) == 1) for spec in order)


_PHRASE = re.compile(
    r"(?:an?|the) (?:(?P<pattern>striped|solid) )?(?:(?P<colour>[a-z]+) )?(?P<shape>[a-z]+)"
    r"(?: (?:on the (?P<side>left|right)|in the (?P<center>center)))?"
)


def parse_caption(caption: str) -> tuple[ObjectSpec, ...]:
    """The objects a caption of this world asks for; the inverse of :func:`caption_for` and :func:`describe`.

    An object without a colour word gets ``ANY_COLOUR``.

    Raises:
        ValueError: if ``caption`` is not a caption of this world.
    """
    parts = caption.strip().lower().split(" and ")
    specs = []
    for part in parts:
        match = _PHRASE.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"`caption` must read like 'a red circle on the left' but has {part!r}.")
        specs.append(
            ObjectSpec(
                match["colour"] or ANY_COLOUR,
                match["shape"],
                match["side"] or "center",
                match["pattern"] or "solid",
            )
        )
    return tuple(specs)

"""The shapes world: seeded, captioned 64x64 scenes of one or two flat shapes on a light background.

The *base* world (what the UNet and text encoder see) uses four colours, three shapes and three positions.
Some colours, shapes and a pattern never appear in it; they make up the held-out concepts that
personalization has to learn. The *wide* world (what the VAE sees) adds random hues, extra shapes and
stripes so that the autoencoder can represent the held-out concepts too.

This module holds the world's vocabulary (colours, shapes, positions, patterns), the objects a caption names
(:class:`ObjectSpec`) and the held-out concepts and pairs. Drawing lives in :mod:`tessera_shapes.drawing`,
captions in :mod:`tessera_shapes.captioning`, scene sampling and datasets in :mod:`tessera_shapes.sampling`.
Everything needs only numpy and Pillow. Images are ``PIL.Image.Image`` in RGB, or uint8 arrays of shape
``(64, 64, 3)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

RGB = tuple[int, int, int]

RESOLUTION = 64
# Shapes are drawn this many times larger and box-filtered down, which anti-aliases their edges.
SUPERSAMPLE = 4
# Stripes are this many output pixels wide (one coloured band, one dark band): one latent cell (the VAE
# downsamples 8x). 3 px bands were finer than a cell and the VAE returned them as flat brown; after the anchored
# VAE stage its reconstructions are scored right for 0.67 of striped squares at 6 px and 1.0 at 8 px.
STRIPE_WIDTH = 8

COLOURS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 50, 190),
    "orange": (245, 135, 20),
}
# The dark band of a striped object; far from every named colour and from the background.
STRIPE_RGB: RGB = (45, 45, 50)

BASE_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
BASE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("left", "right", "center")
HELD_OUT_COLOURS: tuple[str, ...] = ("purple", "orange")
HELD_OUT_SHAPES: tuple[str, ...] = ("star", "ring")
PATTERNS: tuple[str, ...] = ("solid", "striped")
HELD_OUT_PATTERNS: tuple[str, ...] = ("striped",)
# Shapes that only the VAE's wide world draws; they widen what the autoencoder can represent.
EXTRA_SHAPES: tuple[str, ...] = ("pentagon", "hexagon", "diamond", "cross")
SCORED_SHAPES: tuple[str, ...] = BASE_SHAPES + HELD_OUT_SHAPES
ALL_SHAPES: tuple[str, ...] = SCORED_SHAPES + EXTRA_SHAPES

# Every word a caption of this world can contain (the tokenizer gives each one token).
VOCABULARY: tuple[str, ...] = (
    *("a", "an", "the", "and", "on", "in", "left", "right", "center", "striped", "solid"),
    *COLOURS,
    *ALL_SHAPES,
)


# The colour of an object whose caption names none ("a triangle on the right"): any named colour is right.
ANY_COLOUR = "any"


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object: its colour name (or ``ANY_COLOUR``), shape, position and pattern."""

    colour: str
    shape: str
    position: str = "center"
    pattern: str = "solid"

    def __post_init__(self) -> None:
        if self.colour not in COLOURS and self.colour != ANY_COLOUR:
            raise ValueError(f"`colour` must be one of {sorted(COLOURS)} or {ANY_COLOUR!r} but is {self.colour!r}.")
        if self.shape not in ALL_SHAPES:
            raise ValueError(f"`shape` must be one of {ALL_SHAPES} but is {self.shape!r}.")
        if self.position not in POSITIONS:
            raise ValueError(f"`position` must be one of {POSITIONS} but is {self.position!r}.")
        if self.pattern not in PATTERNS:
            raise ValueError(f"`pattern` must be one of {PATTERNS} but is {self.pattern!r}.")

    @property
    def noun_phrase(self) -> str:
        """The object without its position, e.g. ``"an orange ring"``, ``"a striped yellow square"``, ``"a ring"``."""
        colour = [self.colour] if self.colour != ANY_COLOUR else []
        words = ([self.pattern] if self.pattern != "solid" else []) + colour + [self.shape]
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article, *words])

    def at(self, position: str) -> ObjectSpec:
        """The same object placed at ``position``."""
        return ObjectSpec(self.colour, self.shape, position, self.pattern)


@dataclass(frozen=True)
class Concept:
    """A held-out object that personalization must learn; the base model never saw its traits."""

    name: str
    spec: ObjectSpec


HELD_OUT_CONCEPTS: tuple[Concept, ...] = (
    Concept("purple_star", ObjectSpec("purple", "star")),
    Concept("green_ring", ObjectSpec("green", "ring")),
    Concept("purple_triangle", ObjectSpec("purple", "triangle")),
    Concept("striped_red_triangle", ObjectSpec("red", "triangle", pattern="striped")),
    Concept("orange_ring", ObjectSpec("orange", "ring")),
    Concept("striped_square", ObjectSpec("yellow", "square", pattern="striped")),
)
# The concepts the evaluation learns and pairs: ones the shipped VAE draws at every position (its round trip is
# scorer-correct for 23-24/24 at left, centre and right; orange comes back too yellow for the scorer in about a
# third of side positions, so orange_ring and the yellow striped square stay out of the figures), with distinct
# colours and shapes so that leakage either way is visible. purple_star is not learned by today's recipe (2/16
# samples pass the strict scorer: the LoRA draws blobby five-lobed shapes), which would hide fusion behind
# concept learning; preset README, "Known limits".
EVALUATION_CONCEPTS: tuple[str, ...] = ("purple_triangle", "green_ring")

BASE_OBJECTS: tuple[ObjectSpec, ...] = tuple(ObjectSpec(c, s) for c in BASE_COLOURS for s in BASE_SHAPES)


def _held_out_pairs() -> frozenset[tuple[ObjectSpec, ObjectSpec]]:
    # A fixed arithmetic rule (not an RNG) so the split never changes: 12 of the 144 ordered pairs.
    n = len(BASE_OBJECTS)
    return frozenset(
        (BASE_OBJECTS[i].at("left"), BASE_OBJECTS[j].at("right"))
        for i in range(n)
        for j in range(n)
        if (5 * i + 7 * j) % n == 3
    )


# Left/right pairs of base objects that base training never shows, to measure compositional generalization.
HELD_OUT_PAIRS: frozenset[tuple[ObjectSpec, ObjectSpec]] = _held_out_pairs()


@cache
def concept(name: str) -> Concept:
    """The held-out concept called ``name``.

    Raises:
        KeyError: naming the known concepts if ``name`` is not one of them.
    """
    for item in HELD_OUT_CONCEPTS:
        if item.name == name:
            return item
    raise KeyError(f"unknown concept {name!r}; known: {[c.name for c in HELD_OUT_CONCEPTS]}")

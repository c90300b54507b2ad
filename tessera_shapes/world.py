"""The shapes world: seeded, captioned 64x64 scenes of one or two flat shapes on a light background.

The *base* world (what the UNet and text encoder see) uses four colours, three shapes and three positions.
Some colours, shapes and a pattern never appear in it; they make up the held-out concepts that
personalization has to learn. The *wide* world (what the VAE sees) adds random hues, extra shapes and
stripes so that the autoencoder can represent the held-out concepts too.

Everything here needs only numpy and Pillow. Images are ``PIL.Image.Image`` in RGB, or uint8 arrays of
shape ``(64, 64, 3)``.
"""

from __future__ import annotations

import colorsys
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

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


@dataclass(frozen=True)
class _Geometry:
    aspect: float  # height / width of the drawn bounding box
    scale: float  # drawn width relative to the sampled object size, to even out visual areas


_GEOMETRY: dict[str, _Geometry] = {
    "circle": _Geometry(1.0, 1.0),
    "square": _Geometry(1.0, 0.88),
    "triangle": _Geometry(0.87, 1.08),
    "star": _Geometry(0.95, 1.15),
    "ring": _Geometry(1.0, 1.05),
    "pentagon": _Geometry(0.95, 1.0),
    "hexagon": _Geometry(1.0, 1.0),
    "diamond": _Geometry(1.0, 1.1),
    "cross": _Geometry(1.0, 1.0),
}
RING_HOLE = 0.5  # inner diameter / outer diameter


def _normalised(points: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return tuple(((x - x0) / w, (y - y0) / h) for x, y in points)


def _regular(n: int, inner: float | None = None) -> tuple[tuple[float, float], ...]:
    # Pointing up; with ``inner`` it is an n-pointed star with that inner/outer radius ratio.
    steps = 2 * n if inner is not None else n
    points = []
    for k in range(steps):
        r = inner if inner is not None and k % 2 else 1.0
        angle = -math.pi / 2 + 2 * math.pi * k / steps
        points.append((r * math.cos(angle), r * math.sin(angle)))
    return _normalised(points)


# Outlines in the unit box (x right, y down); circle and ring are ellipses and have none.
_POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "square": ((0, 0), (1, 0), (1, 1), (0, 1)),
    "triangle": ((0.5, 0), (1, 1), (0, 1)),
    "star": _regular(5, inner=0.42),
    "pentagon": _regular(5),
    "hexagon": _normalised([(math.cos(math.pi / 3 * k), math.sin(math.pi / 3 * k)) for k in range(6)]),
    "diamond": ((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)),
    "cross": _normalised(
        [(1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (2, 2), (2, 3), (1, 3), (1, 2), (0, 2), (0, 1), (1, 1)]
    ),
}


def shape_box(shape: str, centre: tuple[float, float], size: float) -> tuple[float, float, float, float]:
    """The ``(x0, y0, x1, y1)`` pixel box a shape of nominal ``size`` occupies around ``centre``."""
    geometry = _GEOMETRY[shape]
    w = size * geometry.scale
    h = w * geometry.aspect
    return (centre[0] - w / 2, centre[1] - h / 2, centre[0] + w / 2, centre[1] + h / 2)


def _draw_mask(shape: str, box: tuple[float, float, float, float], resolution: int) -> Image.Image:
    """An ``L`` mask at ``resolution * SUPERSAMPLE`` with the shape filling ``box`` (output pixel units)."""
    big = resolution * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = (v * SUPERSAMPLE for v in box)
    if shape in ("circle", "ring"):
        draw.ellipse((x0, y0, x1, y1), fill=255)
        if shape == "ring":
            mx, my = (x1 - x0) * (1 - RING_HOLE) / 2, (y1 - y0) * (1 - RING_HOLE) / 2
            draw.ellipse((x0 + mx, y0 + my, x1 - mx, y1 - my), fill=0)
    else:
        points = [(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in _POLYGONS[shape]]
        draw.polygon(points, fill=255)
    return mask


def shape_coverage(shape: str, box: tuple[float, float, float, float], resolution: int = RESOLUTION) -> np.ndarray:
    """How much of each pixel a shape filling ``box`` covers.

    Returns:
        float32 array of shape ``(resolution, resolution)`` in [0, 1].
    """
    mask = _draw_mask(shape, box, resolution).resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(mask, dtype=np.float32) / 255.0


@dataclass(frozen=True)
class PlacedObject:
    """An object as drawn: what the caption says plus its exact colour and geometry."""

    spec: ObjectSpec
    rgb: RGB
    centre: tuple[float, float]
    size: float
    stripe_rgb: RGB = STRIPE_RGB

    @property
    def box(self) -> tuple[float, float, float, float]:
        return shape_box(self.spec.shape, self.centre, self.size)


@dataclass(frozen=True)
class Scene:
    """A drawable scene and its caption (empty for wide-world scenes, which are never captioned)."""

    objects: tuple[PlacedObject, ...]
    background: RGB
    caption: str = ""
    specs: tuple[ObjectSpec, ...] = field(default=())


def render_scene(scene: Scene, resolution: int = RESOLUTION) -> Image.Image:
    """Draws ``scene`` as an anti-aliased RGB image of ``resolution`` x ``resolution`` pixels."""
    big = resolution * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), scene.background)
    for obj in scene.objects:
        mask = _draw_mask(obj.spec.shape, obj.box, resolution)
        canvas = Image.composite(fill_image(obj, obj.box[1], big), canvas, mask)
    return canvas.resize((resolution, resolution), Image.Resampling.BOX)


def fill_image(obj: PlacedObject, top: float, side: int) -> Image.Image:
    """The paint of ``obj`` over a whole ``side`` x ``side`` supersampled canvas: its colour, or its stripes with
    bands counted from ``top`` (output pixels; the object's top edge), so a striped object starts with its colour."""
    if obj.spec.pattern != "striped":
        return Image.new("RGB", (side, side), obj.rgb)
    rows = (np.arange(side) - int(top * SUPERSAMPLE)) // (STRIPE_WIDTH * SUPERSAMPLE) % 2
    fill = np.where(rows[:, None, None] == 0, np.array(obj.rgb), np.array(obj.stripe_rgb))
    return Image.fromarray(np.broadcast_to(fill, (side, side, 3)).astype(np.uint8), "RGB")


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


def _jitter(rgb: RGB, rng: np.random.Generator, amount: int) -> RGB:
    values = np.clip(np.array(rgb) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return (int(values[0]), int(values[1]), int(values[2]))


def _background(rng: np.random.Generator) -> RGB:
    grey = int(rng.integers(236, 251))
    return _jitter((grey, grey, grey - 3), rng, 3)


# Horizontal centres (in 64 px units) of a three-object row; its objects are smaller so that they never touch.
_ROW_X = {"left": 11.0, "center": 32.0, "right": 53.0}


def place_objects(specs: Sequence[ObjectSpec], rng: np.random.Generator, *, colour_jitter: int = 10) -> Scene:
    """Draws sizes and positions for ``specs`` and returns the scene with its canonical caption.

    A lone centred object is 22-30 px wide around the middle; an object at a side is 17-24 px wide in its half;
    in a row of three (left, center, right) each object is 14-18 px wide.
    """
    objects = []
    row = len(specs) == 3
    for spec in specs:
        if row:
            size = float(rng.uniform(14, 18))
            centre = (_ROW_X[spec.position] + float(rng.uniform(-2, 2)), 32 + float(rng.uniform(-6, 6)))
        elif spec.position == "center":
            size = float(rng.uniform(22, 30))
            centre = (32 + float(rng.uniform(-3, 3)), 32 + float(rng.uniform(-3, 3)))
        else:
            size = float(rng.uniform(17, 24))
            x = 16.0 if spec.position == "left" else 48.0
            centre = (x + float(rng.uniform(-3, 3)), 32 + float(rng.uniform(-6, 6)))
        scale = RESOLUTION / 64
        objects.append(
            PlacedObject(
                spec,
                _jitter(COLOURS[spec.colour], rng, colour_jitter),
                (centre[0] * scale, centre[1] * scale),
                size * scale,
            )
        )
    caption = (
        caption_for(specs)
        if len(specs) < 3
        else " and ".join(
            f"{s.noun_phrase} {'in the center' if s.position == 'center' else 'on the ' + s.position}" for s in specs
        )
    )
    return Scene(tuple(objects), _background(rng), caption, tuple(specs))


def _random_base_object(rng: np.random.Generator) -> ObjectSpec:
    return BASE_OBJECTS[int(rng.integers(len(BASE_OBJECTS)))]


def _has_held_out_pair(specs: Sequence[ObjectSpec]) -> bool:
    by_side = {s.position: s for s in specs}
    if "left" not in by_side or "right" not in by_side:
        return False
    return (by_side["left"].at("left"), by_side["right"].at("right")) in HELD_OUT_PAIRS


def sample_base_specs(rng: np.random.Generator, *, include_held_out_pairs: bool = False) -> tuple[ObjectSpec, ...]:
    """Objects for one base-world scene: 30% one centred object, 20% one at a side, 40% a left/right pair and
    10% a row of three (left, center, right). Held-out left/right pairs are redrawn unless included."""
    kind = rng.random()
    if kind < 0.3:
        return (_random_base_object(rng),)
    if kind < 0.5:
        return (_random_base_object(rng).at("left" if rng.random() < 0.5 else "right"),)
    positions = ("left", "right") if kind < 0.9 else ("left", "center", "right")
    while True:
        specs = tuple(_random_base_object(rng).at(p) for p in positions)
        if include_held_out_pairs or not _has_held_out_pair(specs):
            return specs


def sample_base_scene(rng: np.random.Generator, style: CaptionStyle = CaptionStyle()) -> Scene:
    """One base-world scene (held-out pairs excluded) with a varied caption from :func:`describe`."""
    specs = sample_base_specs(rng)
    scene = place_objects(specs, rng)
    return Scene(scene.objects, scene.background, describe(specs, rng, style), specs)


def _random_rgb(rng: np.random.Generator) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(float(rng.random()), float(rng.uniform(0.45, 1.0)), float(rng.uniform(0.45, 1.0)))
    return (round(r * 255), round(g * 255), round(b * 255))


def sample_wide_scene(rng: np.random.Generator, *, striped_share: float = 0.2) -> Scene:
    """One scene of the VAE's wider world: 1-3 objects of any shape, random hues, stripes, any placement.

    Args:
        striped_share: the chance that an object is striped.
    """
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        shape = ALL_SHAPES[int(rng.integers(len(ALL_SHAPES)))]
        colour_name = BASE_COLOURS[int(rng.integers(len(BASE_COLOURS)))]
        rgb = _jitter(COLOURS[colour_name], rng, 10) if rng.random() < 0.3 else _random_rgb(rng)
        striped = rng.random() < striped_share
        stripe = _jitter(STRIPE_RGB, rng, 10) if rng.random() < 0.6 else _random_rgb(rng)
        size = float(rng.uniform(12, 32))
        centre = (float(rng.uniform(10, 54)), float(rng.uniform(10, 54)))
        spec = ObjectSpec(colour_name, shape, "center", "striped" if striped else "solid")
        objects.append(PlacedObject(spec, rgb, centre, size, stripe))
    background = _background(rng) if rng.random() < 0.8 else _jitter((225, 225, 225), rng, 25)
    return Scene(tuple(objects), background)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for scene ``index`` of a dataset drawn with ``seed``: any scene can be redrawn alone."""
    return np.random.default_rng([seed, index])


class BaseDataset(NamedTuple):
    """Base-world images with their captions and the objects each shows (to word them again)."""

    images: np.ndarray
    captions: list[str]
    specs: list[tuple[ObjectSpec, ...]]


def draw_base_dataset(n: int, seed: int) -> BaseDataset:
    """``n`` base-world images, captions and object specs, reproducible from ``seed``.

    Returns:
        uint8 images of shape ``(n, 64, 64, 3)``, their ``n`` captions and ``n`` tuples of object specs.
    """
    images = np.empty((n, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    captions, specs = [], []
    for i in range(n):
        scene = sample_base_scene(scene_rng(seed, i))
        images[i] = np.asarray(render_scene(scene))
        captions.append(scene.caption)
        specs.append(scene.specs)
    return BaseDataset(images, captions, specs)


def draw_wide_dataset(n: int, seed: int) -> np.ndarray:
    """``n`` wide-world images (uncaptioned), reproducible from ``seed``; uint8, shape ``(n, 64, 64, 3)``."""
    images = np.empty((n, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = np.asarray(render_scene(sample_wide_scene(scene_rng(seed, i))))
    return images


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
